// Test hosts as network namespaces: a server on host A answers a client on host B, is unreachable
// from the root namespace, vanishes behind a cut, returns on heal, and leaves nothing behind.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync, type ChildProcess } from 'node:child_process';
import { connect } from 'node:net';
import { createHosts, listNamespaces, type Hosts } from './helpers/netns.js';

// Echoes every chunk; reports its pid and port (port 0) once listening on the given address.
const SERVER = `const net = require('node:net');
const server = net.createServer((c) => { c.setNoDelay(true); c.on('data', (d) => c.write(d)); });
server.listen(0, process.argv[1], () => console.log(JSON.stringify({ pid: process.pid, port: server.address().port })));`;

// Connects, times `count` one-byte round trips, prints {rtts} or {error}; gives up after timeoutMs.
const CLIENT = `const net = require('node:net');
const [host, port, count, timeoutMs] = process.argv.slice(1);
const done = (o) => { console.log(JSON.stringify(o)); process.exit(0); };
setTimeout(() => done({ error: 'timeout' }), Number(timeoutMs));
const c = net.connect({ host, port: Number(port) });
c.setNoDelay(true);
c.on('error', (e) => done({ error: e.code }));
c.on('connect', () => {
  const rtts = [];
  let t0 = 0n;
  const ping = () => { t0 = process.hrtime.bigint(); c.write('x'); };
  c.on('data', () => {
    rtts.push(Number(process.hrtime.bigint() - t0) / 1e6);
    if (rtts.length < Number(count)) ping(); else done({ rtts });
  });
  ping();
});`;

interface Reply { rtts?: number[]; error?: string }

let lab: Hosts;
let server: ChildProcess;
let serverInfo: { pid: number; port: number };
let rootLinksBefore: string[];

function rootLinks(): string[] {
  const out = spawnSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8', timeout: 5_000 }).stdout;
  return out.split('\n').filter((l) => l !== '').map((l) => l.split(':')[1].trim()).sort();
}

function firstLine(child: ChildProcess, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error(`no output within ${timeoutMs} ms`)), timeoutMs);
    child.stdout?.setEncoding('utf8').on('data', (d: string) => {
      buf += d;
      if (buf.includes('\n')) { clearTimeout(timer); resolve(buf.split('\n')[0]); }
    });
    child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`server exited (${code}) before listening`)); });
  });
}

async function ping(from: string, count: number, timeoutMs: number): Promise<Reply> {
  const args = ['-e', CLIENT, lab.host('a').address, String(serverInfo.port), String(count), String(timeoutMs)];
  const r = await lab.run(from, process.execPath, args, { timeoutMs: timeoutMs + 5_000 });
  assert.is(r.code, 0, `client failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as Reply;
}

/** A connect from the root namespace: it must not reach the test hosts' addresses. */
function connectFromRoot(host: string, port: number, timeoutMs: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const finish = (outcome: string) => { clearTimeout(timer); socket.destroy(); resolve(outcome); };
    const timer = setTimeout(() => finish('timeout'), timeoutMs);
    socket.once('connect', () => finish('connected'));
    socket.once('error', (e: NodeJS.ErrnoException) => finish(e.code ?? e.message));
  });
}

let setupError: unknown;

// uvu 0.5 swallows an error thrown by a before hook and exits 0, so a non-root run would
// pass silently; keeping the error and failing every test with it makes the run red and plain.
test.before(async () => {
  try {
    rootLinksBefore = rootLinks();
    lab = await createHosts(['a', 'b']);
    server = lab.exec('a', process.execPath, ['-e', SERVER, lab.host('a').address], { stdio: ['ignore', 'pipe', 'inherit'] });
    serverInfo = JSON.parse(await firstLine(server, 5_000));
  } catch (e) {
    setupError = e;
  }
});

test.before.each(() => {
  if (setupError !== undefined) throw setupError;
});

test.after(async () => {
  await lab?.destroy();
});

test('each host has its own namespace and address; the root namespace gains no links', () => {
  assert.equal(lab.hosts.map((h) => h.name), ['a', 'b']);
  assert.is.not(lab.host('a').address, lab.host('b').address);
  for (const h of lab.hosts) assert.ok(listNamespaces().includes(h.ns), `${h.ns} exists`);
  assert.equal(rootLinks(), rootLinksBefore);
});

test('a process started on a host has the pid exec reports', () => {
  assert.is(serverInfo.pid, server.pid);
});

test('a client on host B gets a reply from the server on host A', async () => {
  const reply = await ping('b', 3, 5_000);
  assert.equal(reply.error, undefined);
  assert.is(reply.rtts?.length, 3);
});

test('the server is not reachable from the root namespace', async () => {
  const outcome = await connectFromRoot(lab.host('a').address, serverInfo.port, 1_000);
  assert.is.not(outcome, 'connected');
});

test('cut(A) makes B fail to connect within a bound; heal(A) restores it', async () => {
  lab.cut('a');
  const cut = await ping('b', 1, 1_000);
  assert.ok(cut.error !== undefined, `connect during the cut should fail, got ${JSON.stringify(cut)}`);
  lab.heal('a');
  let healed: Reply = {};
  for (let attempt = 0; attempt < 3 && healed.rtts === undefined; attempt++) healed = await ping('b', 1, 3_000);
  assert.is(healed.rtts?.length, 1, `after heal: ${JSON.stringify(healed)}`);
});

test('netem delay of 50 ms shows in the round trip to A (or netem says the kernel lacks it)', async () => {
  const base = Math.min(...((await ping('b', 5, 5_000)).rtts ?? [Infinity]));
  assert.ok(base < 40, `baseline round trip ${base} ms`);
  if (!lab.netemSupported) {
    // A kernel without sch_netem cannot delay packets at all; the helper must say so plainly.
    assert.throws(() => lab.netem('a', { delayMs: 50 }), /CONFIG_NET_SCH_NETEM/);
    console.warn('netns.test: this kernel has no sch_netem; delay was not measured');
    return;
  }
  lab.netem('a', { delayMs: 50 });
  const delayed = Math.min(...((await ping('b', 5, 5_000)).rtts ?? [0]));
  lab.clearNetem('a');
  assert.ok(delayed >= 40, `delayed round trip ${delayed} ms`);
});

test('destroy() ends host processes and leaves no namespace or link of ours; twice is fine', async () => {
  await lab.destroy();
  await lab.destroy();
  assert.ok(server.exitCode !== null || server.signalCode !== null, 'server process ended');
  assert.equal(listNamespaces().filter((ns) => ns.startsWith(lab.prefix)), []);
  assert.equal(rootLinks(), rootLinksBefore);
});

test.run();
