// Test hosts as network namespaces: a server on host A answers a client on host B, is unreachable
// from the root namespace, vanishes behind a cut, returns on heal, slows down and loses packets
// under netem (delay, loss, a rate; without sch_netem), and leaves nothing behind.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync, type ChildProcess } from 'node:child_process';
import { connect } from 'node:net';
import { createHosts, listNamespaces, setUpOnce, type Hosts } from './helpers/netns.js';

// Echoes every chunk; reports its pid and port (port 0) once listening on the given address.
const SERVER = `const net = require('node:net');
const server = net.createServer((c) => { c.setNoDelay(true); c.on('data', (d) => c.write(d)); });
server.listen(0, process.argv[1], () => console.log(JSON.stringify({ pid: process.pid, port: server.address().port })));`;

// Connects, times `count` round trips of `size` bytes (each ends when all are echoed), prints
// {rtts} or {error}; gives up after timeoutMs.
const CLIENT = `const net = require('node:net');
const [host, port, count, timeoutMs, size] = process.argv.slice(1);
const done = (o) => { console.log(JSON.stringify(o)); process.exit(0); };
setTimeout(() => done({ error: 'timeout' }), Number(timeoutMs));
const c = net.connect({ host, port: Number(port) });
c.setNoDelay(true);
c.on('error', (e) => done({ error: e.code }));
c.on('connect', () => {
  const rtts = [];
  let t0 = 0n;
  let echoed = 0;
  const ping = () => { t0 = process.hrtime.bigint(); echoed = 0; c.write(Buffer.alloc(Number(size), 120)); };
  c.on('data', (d) => {
    echoed += d.length;
    if (echoed < Number(size)) return;
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

async function ping(from: string, count: number, timeoutMs: number, size = 1): Promise<Reply> {
  const args = ['-e', CLIENT, lab.host('a').address, String(serverInfo.port), String(count), String(timeoutMs), String(size)];
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

setUpOnce(test, async () => {
  rootLinksBefore = rootLinks();
  lab = await createHosts(['a', 'b']);
  server = lab.exec('a', process.execPath, ['-e', SERVER, lab.host('a').address], { stdio: ['ignore', 'pipe', 'inherit'] });
  serverInfo = JSON.parse(await firstLine(server, 5_000));
}, async () => {
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

const fastest = (reply: Reply): number => Math.min(...(reply.rtts ?? [Infinity]));

/** Packets the host's loss rule dropped so far, from its iptables counters. */
function dropped(host: string): number {
  const out = spawnSync('ip', ['netns', 'exec', lab.host(host).ns, 'iptables', '-t', 'mangle', '-L', 'RPCMIG_NETEM', '-v', '-x', '-n'], { encoding: 'utf8', timeout: 5_000 }).stdout;
  const rule = out.split('\n').find((line) => / DROP /.test(line) && line.includes('statistic'));
  return Number(rule?.trim().split(/\s+/)[0] ?? -1);
}

test('netem delay: 50 ms on packets to A shows in the round trip, and clearNetem takes it away', async () => {
  const base = fastest(await ping('b', 5, 5_000));
  assert.ok(base < 40, `baseline round trip ${base} ms`);
  await lab.netem('a', { delayMs: 50 });
  const delayed = fastest(await ping('b', 5, 5_000));
  await lab.clearNetem('a');
  assert.ok(delayed >= 45 && delayed < 1_000, `delayed round trip ${delayed} ms`);
  const after = fastest(await ping('b', 5, 5_000));
  assert.ok(after < 40, `round trip after clearNetem ${after} ms`);
});

test('netem loss: 20% of packets to A dropped, counted by the rule; TCP still gets every echo through', async () => {
  await lab.netem('a', { lossPercent: 20 });
  const lossy = await ping('b', 40, 20_000);
  const drops = dropped('a');
  await lab.clearNetem('a');
  assert.is(lossy.rtts?.length, 40, `every round trip completes: ${JSON.stringify(lossy)}`);
  assert.ok(drops > 0, `the loss rule dropped ${drops} packets`);
  assert.is(dropped('a'), -1, 'clearNetem removed the rule');
});

test('netem rate: at 1 Mbit a 200 KB echo from A takes over a second (about 1.6 s); unshaped, far less', async () => {
  const base = fastest(await ping('b', 1, 10_000, 200_000));
  await lab.netem('a', { rateKbit: 1000 });
  const slow = fastest(await ping('b', 1, 20_000, 200_000));
  await lab.clearNetem('a');
  assert.ok(base < 1_000, `unshaped: ${base} ms`);
  assert.ok(slow >= 1_200 && slow < 15_000, `at 1 Mbit: ${slow} ms`);
});

test('destroy() ends host processes and leaves no namespace or link of ours; twice is fine', async () => {
  await lab.destroy();
  await lab.destroy();
  assert.ok(server.exitCode !== null || server.signalCode !== null, 'server process ended');
  assert.equal(listNamespaces().filter((ns) => ns.startsWith(lab.prefix)), []);
  assert.equal(rootLinks(), rootLinksBefore);
});

test.run();
