// Live migration on loopback, two and three daemons (DESIGN §3): state and call counts exact
// after moves there and back, every call exactly once under load, the calls around the order,
// redirects and forwarding entries, the program cache, and every abort leaving the source
// serving with its state and the destination clean.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { cpSync, existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { connect, STATS, type Client, type RpcmigError } from '../runtime/index.js';
import { loadKey, openDaemon } from '../runtime/daemonlink.js';
import { breakdown, Cluster, COUNTER, FIXTURES, RDICT } from './helpers/cluster.js';
import { CLI, cleanEnv, writeKey, startDaemonProcess, type DaemonProcess } from './helpers/daemon.js';
import { spawnSync } from 'node:child_process';
import { isAlive, ROOT, start, stop, waitFor, type Started } from './helpers/process.js';
import { monotonicMs } from '../runtime/migrating.js';
import { stoppedAt } from '../daemon/move.js';

/** The procedures of fixtures/counter and fixtures/rdict (ESM programs, typed here by hand). */
interface Counter {
  incr(by?: number): number;
  get(): number;
  slow(ms: number): number;
  where(): { pid: number; moves: number; startedAt: number[] };
}
interface Rdict {
  insert(word: string, meaning: string): boolean;
  lookup(word: string): string | null;
  stats(): { words: number; lookups: number };
}

const cluster = new Cluster();
let a: DaemonProcess;
let b: DaemonProcess;
const clients: Array<{ close(): Promise<void> }> = [];
let names = 0;

test.before(async () => {
  a = await cluster.daemon();
  b = await cluster.daemon();
});
test.after(async () => {
  await Promise.all(clients.map((client) => client.close()));
  await cluster.close();
});

async function counterOn(daemon: DaemonProcess, args: string[] = []): Promise<{ name: string; pid: number; client: Client<Counter>; started: Started }> {
  const name = `counter${names++}`;
  const started = await cluster.server(COUNTER, daemon, ['--name', name, ...args]);
  const client = await connect<Counter>(name, { daemon: daemon.address, keyFile: cluster.key.file });
  clients.push(client);
  return { name, pid: started.pid, client, started };
}

const spool = (daemon: DaemonProcess, ...parts: string[]) => join(daemon.spool, ...parts);
const entries = (dir: string) => (existsSync(dir) ? readdirSync(dir) : []);

test('rdict moves to B and back: every word and the lookup count arrive exactly', async () => {
  await cluster.server(RDICT, a);
  const dict = await connect<Rdict>('rdict', { daemon: a.address, keyFile: cluster.key.file });
  clients.push(dict);
  for (let i = 0; i < 1000; i++) await dict.insert(`word${i}`, `meaning ${i}`);
  for (let i = 0; i < 10; i++) assert.is(await dict.lookup(`word${i * 7}`), `meaning ${i * 7}`);
  const there = breakdown(await cluster.migrate('rdict', a, b, ['--grace', '1']));
  for (const field of ['quiesce_ms', 'snapshot_ms', 'copy_ms', 'start_ms', 'total_ms', 'pause_ms', 'state_bytes', 'program_bytes_sent', 'stopped_at', 'answered_at']) {
    assert.type(there[field], 'number', field);
  }
  assert.is(there.from, a.address);
  assert.is(there.to, b.address);
  assert.ok((there.state_bytes as number) > 1000 * 10, `state_bytes ${there.state_bytes}`);
  assert.is(await dict.lookup('word999'), 'meaning 999');
  assert.equal(await dict.stats(), { words: 1000, lookups: 11 });
  assert.is((await cluster.serving(b, 'rdict')).address, there.address);
  assert.equal((await cluster.ls(a)).forwards, [{ name: 'rdict', to: there.address }]);
  const back = breakdown(await cluster.migrate('rdict', b, a, ['--grace', '1']));
  assert.is(await dict.lookup('word0'), 'meaning 0');
  assert.equal(await dict.stats(), { words: 1000, lookups: 12 });
  assert.is((await cluster.serving(a, 'rdict')).address, back.address);
  assert.equal((await cluster.ls(a)).forwards, [], 'the forward ends when the server lives here again');
  assert.equal(entries(spool(a, 'leaving')), [], 'the source deleted its state file');
  assert.equal(entries(spool(b, 'arriving')), [], 'the destination deleted its state file');
});

test('the pause counts from the instant the server reports it stopped, on the host\'s monotonic clock', () => {
  const orderTaken = performance.now() - 20;
  const stopped = stoppedAt({ id: 'm', stopped_at: monotonicMs() - 5 }, orderTaken);
  assert.ok(stopped !== undefined && Math.abs(performance.now() - 5 - stopped) < 2, `stopped ${stopped} is 5 ms ago`);
  // An instant before the order was taken, in the future, or not given: the order's taking stands.
  assert.is(stoppedAt({ id: 'm', stopped_at: monotonicMs() - 50 }, orderTaken), undefined);
  assert.is(stoppedAt({ id: 'm', stopped_at: monotonicMs() + 50 }, orderTaken), undefined);
  assert.is(stoppedAt({ id: 'm' }, orderTaken), undefined);
  assert.is(stoppedAt({ id: 'm', stopped_at: monotonicMs() - 5 }, undefined), undefined);
});

test('the source\'s probe of the new server leaves no completion record there: only the clients\' travel on', async () => {
  const { name, client } = await counterOn(a);
  await client.incr(1);
  breakdown(await cluster.migrate(name, a, b, ['--grace', '1']));
  assert.is(await client.incr(1), 2);
  // Asked without a client id of its own, so as not to count itself.
  const where = (await cluster.serving(b, name)).address.split(':');
  const plain = await connect<{ [STATS](): { clients: number; records: number } }>({ host: where[0], port: Number(where[1]), exactlyOnce: false });
  clients.push(plain as unknown as Client<Counter>);
  assert.equal(await plain[STATS](), { clients: 1, records: 1 });
});

test('a large state goes to the destination while its server writes it, and arrives whole', async () => {
  interface Big { fill(n: number, bytes?: number): number; lookup(word: string): string | null; size(): number }
  const words = 300_000;
  await cluster.server(join(FIXTURES, 'bigdict', 'server.js'), a, ['--name', 'tailed']);
  const big = await connect<Big>('tailed', { daemon: a.address, keyFile: cluster.key.file });
  clients.push(big as unknown as Client<Counter>);
  assert.is(await big.fill(words, 40), words);
  const figures = breakdown(await cluster.migrate('tailed', a, b, ['--grace', '1']));
  assert.is(await big.size(), words);
  for (const i of [0, 1, 12_345, words - 1]) assert.is(await big.lookup(`word${i}`), `meaning ${i} ${'x'.repeat(28)}`);
  const said = new RegExp(`migration \\S+: (\\d+) of the state's ${figures.state_bytes} bytes went while the server wrote them`).exec(a.stderr());
  assert.ok(said, `the source says what went while the server wrote: ${a.stderr().split('\n').filter((line) => line.includes('tailed') || line.includes('bytes went')).slice(-5).join(' | ')}`);
  assert.ok(Number(said![1]) > 0, `${said![1]} bytes went while the server wrote`);
});

test('exactly once: 8 clients pipelining increments while the counter moves A->B->A->B', async () => {
  const { name, client } = await counterOn(a);
  const callers = await Promise.all(Array.from({ length: 8 }, () => connect<Counter>(name, { daemon: a.address, keyFile: cluster.key.file })));
  clients.push(...callers);
  let acknowledged = 0;
  const errors: string[] = [];
  let running = true;
  const load = callers.map(async (caller) => {
    for (let round = 0; running && round < 100_000; round++) {
      const batch = Array.from({ length: 16 }, () => caller.incr(1));
      for (const outcome of await Promise.allSettled(batch)) {
        if (outcome.status === 'fulfilled') acknowledged++;
        else errors.push(String(outcome.reason));
      }
    }
  });
  const hops: Array<[DaemonProcess, DaemonProcess]> = [[a, b], [b, a], [a, b]];
  for (const [from, to] of hops) {
    await new Promise((resolve) => setTimeout(resolve, 150));
    breakdown(await cluster.migrate(name, from, to, ['--grace', '2']));
  }
  await new Promise((resolve) => setTimeout(resolve, 150));
  running = false;
  await Promise.all(load);
  assert.equal(errors, [], 'no client saw an error');
  assert.ok(acknowledged > 1000, `only ${acknowledged} increments`);
  assert.is(await client.get(), acknowledged);
  assert.is((await client.where()).moves, 3);
});

test('a call executing at the order replies from the source; one arriving mid-move runs once, at the destination', async () => {
  const { name, client, pid, started } = await counterOn(a);
  // Long enough to be still executing when the order comes, after the program is shipped and
  // the destination's standby started, even on a busy machine.
  const slow = client.slow(4000);
  await new Promise((resolve) => setTimeout(resolve, 100));
  const moving = cluster.migrate(name, a, b, ['--grace', '1']);
  assert.ok(await waitFor(() => started.stderr().includes('serving -> quiescing'), 10_000), 'the server took the order');
  const sent = monotonicMs();
  const during = client.where();
  assert.is(await slow, 1);
  const arrived = await during;
  const answered = monotonicMs();
  assert.is.not(arrived.pid, pid, 'the call held during the move ran at the destination');
  const figures = breakdown(await moving);
  // The pause's ends are instants of the host's monotonic clock, which this process shares: the
  // server stopped before the held call was sent (it was sent once the server said so), and the
  // new host answered after that.
  const [from, to] = [figures.stopped_at as number, figures.answered_at as number];
  assert.ok(from <= sent && sent < to && to <= monotonicMs(), `stopped_at ${from}, sent ${sent}, answered_at ${to}, now ${monotonicMs()}`);
  assert.ok(Math.abs(to - from - (figures.pause_ms as number)) < 0.01, `answered_at - stopped_at = ${to - from}, pause_ms ${figures.pause_ms}`);
  assert.ok(answered > from, `the held call's answer came after the stop (${answered} > ${from})`);
  assert.ok((figures.quiesce_ms as number) > 300, `quiesce_ms ${figures.quiesce_ms} waited for the slow call`);
  // The held call waited from the server's stop, through the slow call, to the new host's answer.
  assert.ok((figures.pause_ms as number) >= (figures.quiesce_ms as number), `pause_ms ${figures.pause_ms} counts the quiesce (${figures.quiesce_ms})`);
  assert.ok((figures.pause_ms as number) <= (figures.total_ms as number), `pause_ms ${figures.pause_ms} within total_ms ${figures.total_ms}`);
  assert.is(await client.incr(1), 2);
  assert.is(await client.get(), 2);
});

test('a client connected before the move follows MOVED; after the grace period it finds the server through the forward', async () => {
  const { name, client, pid } = await counterOn(a);
  await client.incr(5);
  const figures = breakdown(await cluster.migrate(name, a, b, ['--grace', '0.5']));
  assert.is(await client.incr(1), 6);
  assert.ok(await waitFor(() => !isAlive(pid), 5000), 'the old process exits after its grace period');
  const fresh = await connect<Counter>(name, { daemon: a.address, keyFile: cluster.key.file });
  clients.push(fresh);
  assert.is(await fresh.get(), 6, 'a fresh client resolving at the old daemon arrives');
  const late = await counterOn(a);
  await late.client.incr(2);
  breakdown(await cluster.migrate(late.name, a, b, ['--grace', '0.2']));
  assert.ok(await waitFor(() => !isAlive(late.pid), 5000));
  assert.is(await late.client.get(), 2, 'a client whose server exited asks the daemon again');
  assert.is((await cluster.ls(a)).forwards.find((f) => f.name === name)?.to, figures.address);
});

test('a forwarding entry survives a restart of the source daemon', async () => {
  const source = await cluster.daemon();
  const { name, client } = await counterOn(source);
  await client.incr(9);
  const figures = breakdown(await cluster.migrate(name, source, b, ['--grace', '0.2']));
  await stop(source.pid);
  const again = await startDaemonProcess(cluster.key.file, dirname(source.spool));
  try {
    assert.equal((await cluster.ls(again)).forwards, [{ name, to: figures.address }]);
    const fresh = await connect<Counter>(name, { daemon: again.address, keyFile: cluster.key.file });
    clients.push(fresh);
    assert.is(await fresh.get(), 9);
  } finally {
    await cluster.ls(again).catch(() => undefined); // its servers are ended with the cluster's
    await stop(again.pid);
  }
});

test('a daemon that restarts finds its servers again: they register anew, and move', async () => {
  const dir = join(cluster.dir, 'restarting');
  const listen = (address: string) => [CLI, 'daemon', '--listen', address, '--dir', join(dir, 'spool'), '--key-file', cluster.key.file];
  const first = await start(process.execPath, listen('127.0.0.1:0'), { env: cleanEnv(), ready: /^rpcmig daemon listening on (\S+:\d+) /m });
  const address = first.ready[0];
  const host = { ...first, address } as DaemonProcess;
  const { name, client, started } = await counterOn(host);
  await client.incr(3);
  await stop(first.pid);
  const again = await start(process.execPath, listen(address), { env: cleanEnv(), ready: /^rpcmig daemon listening on (\S+:\d+) /m });
  try {
    const restarted = { ...again, address } as DaemonProcess;
    assert.ok(await waitFor(() => started.stderr().includes('registered again'), 10_000), started.stderr());
    assert.is((await cluster.serving(restarted, name)).pid, started.pid);
    assert.is(await client.incr(1), 4, 'it served on meanwhile');
    breakdown(await cluster.migrate(name, restarted, b, ['--grace', '0.2']));
    assert.is(await client.get(), 4);
  } finally {
    await stop(again.pid);
  }
});

test('A->B->C leaves a chain that a client starting at A still follows', async () => {
  const c = await cluster.daemon();
  const { name, client } = await counterOn(a);
  await client.incr(3);
  breakdown(await cluster.migrate(name, a, b, ['--grace', '0.2']));
  const last = breakdown(await cluster.migrate(name, b, c, ['--grace', '0.2']));
  const fresh = await connect<Counter>(name, { daemon: a.address, keyFile: cluster.key.file });
  clients.push(fresh);
  assert.is(await fresh.incr(1), 4);
  assert.is((await fresh.where()).pid, (await cluster.serving(c, name)).pid);
  assert.is((await cluster.serving(c, name)).address, last.address);
});

test('the destination runs a standby ahead of the state; a program without one is started cold', async () => {
  const { name, client } = await counterOn(a);
  await client.incr(1);
  breakdown(await cluster.migrate(name, a, b, ['--grace', '0.2']));
  const log = entries(spool(b, 'logs')).find((file) => file.startsWith(`${name}-`));
  assert.ok(log, 'the moved server logs under the spool');
  const [loaded, committed] = [`the standby loaded ${name}, which waits for its state`, `${name} committed`].map((line) => b.stderr().indexOf(line));
  assert.ok(loaded >= 0 && loaded < committed, `the program's modules were loaded before its state arrived:\n${b.stderr()}`);
  const cold = join(cluster.dir, 'cold-program');
  cpSync(join(ROOT, 'fixtures'), cold, { recursive: true, filter: (path) => !path.includes(`${join('fixtures', 'transform')}`) });
  rmSync(join(cold, 'node_modules', 'rpcmig', 'dist', 'runtime', 'standby.js'));
  const pkg = join(cold, 'node_modules', 'rpcmig', 'package.json');
  const manifest = JSON.parse(readFileSync(pkg, 'utf8')) as { exports: Record<string, unknown> };
  delete manifest.exports['./standby'];
  writeFileSync(pkg, JSON.stringify(manifest));
  const started = await cluster.server(join(cold, 'dist', 'counter', 'server.js'), a, ['--name', 'cold']);
  const coldClient = await connect<Counter>('cold', { daemon: a.address, keyFile: cluster.key.file });
  clients.push(coldClient);
  await coldClient.incr(4);
  breakdown(await cluster.migrate('cold', a, b, ['--grace', '0.2']));
  assert.is(await coldClient.get(), 4);
  assert.is.not((await coldClient.where()).pid, started.pid);
});

test('on a terminal, a copy that runs long shows its progress; elsewhere nothing is added', async () => {
  const eager = await cluster.daemon({ RPCMIG_PROGRESS_AFTER_MS: '0' });
  const { name, client } = await counterOn(eager);
  await client.incr(1);
  const command = [process.execPath, CLI, 'migrate', name, '--daemon', eager.address, '--to', b.address, '--grace', '0.2'].join(' ');
  const onTerminal = spawnSync('script', ['-qec', command, '/dev/null'], { env: cleanEnv({ RPCMIG_KEY_FILE: cluster.key.file }), encoding: 'utf8', timeout: 30_000 });
  assert.is(onTerminal.status, 0, onTerminal.stdout);
  assert.match(onTerminal.stdout, /\r\x1b\[Kcopy: 0\.0 of 0\.0 MB sent, \d+ MB\/s/);
  assert.match(onTerminal.stdout, /\r\x1b\[Kmigrated /);
  const piped = await cluster.migrate(name, b, eager, ['--grace', '0.2']);
  assert.is(piped.code, 0);
  assert.is(piped.stderr, '');
});

/** After a failed move: the source serves the same state, the destination holds nothing of it. */
async function assertRolledBack(name: string, client: Client<Counter>, pid: number, count: number, to?: DaemonProcess): Promise<void> {
  assert.is((await cluster.serving(a, name)).pid, pid);
  assert.is(await client.get(), count);
  assert.is(await client.incr(1), count + 1);
  assert.is((await client.where()).pid, pid);
  if (to) {
    assert.is((await cluster.ls(to)).servers.find((s) => s.name === name), undefined);
    assert.equal(entries(spool(to, 'arriving')), []);
  }
  assert.equal(entries(spool(a, 'leaving')), []);
}

function assertFailed(result: { code: number | null; stdout: string; stderr: string }, step: string, reason: RegExp): void {
  assert.is(result.code, 9, result.stderr);
  assert.is(result.stdout, '');
  assert.match(result.stderr, new RegExp(`^rpcmig migrate: MIGRATION_FAILED: ${step} failed: `));
  assert.match(result.stderr, reason);
  assert.match(result.stderr, /serves on at /);
}

test('abort: no daemon at the destination', async () => {
  const { name, client, pid } = await counterOn(a);
  await client.incr(7);
  const result = await cluster.cli(['migrate', name, '--daemon', a.address, '--to', '127.0.0.1:1', '--json']);
  assertFailed(result, 'prepare', /NO_DAEMON: no daemon at 127\.0\.0\.1:1/);
  await assertRolledBack(name, client, pid, 7);
});

test('abort: the destination holds another key', async () => {
  const other = writeKey(cluster.dir, 'other.key');
  const stranger = await startDaemonProcess(other.file, join(cluster.dir, 'stranger'));
  try {
    const { name, client, pid } = await counterOn(a);
    await client.incr(2);
    assertFailed(await cluster.migrate(name, a, stranger), 'prepare', /AUTH_FAILED/);
    await assertRolledBack(name, client, pid, 2);
  } finally {
    await stop(stranger.pid);
  }
});

test('abort: the program fails to restore at the destination; its log says why', async () => {
  const { name, client, pid } = await counterOn(a, ['--fail-restore']);
  await client.incr(4);
  assertFailed(await cluster.migrate(name, a, b), 'start', /exited with code 3 before it served; its log ends:\ncounter: --fail-restore/);
  await assertRolledBack(name, client, pid, 4, b);
});

test('abort: the restored program never serves (time-out); the destination ends it', async () => {
  const slowStart = await cluster.daemon({ RPCMIG_START_TIMEOUT_MS: '1500' });
  const { name, client, pid } = await counterOn(a, ['--hang-restore']);
  await client.incr(1);
  const started = Date.now();
  assertFailed(await cluster.migrate(name, a, slowStart), 'start', /did not serve within 1500 ms/);
  assert.ok(Date.now() - started < 30_000);
  await assertRolledBack(name, client, pid, 1, slowStart);
  const logs = entries(spool(slowStart, 'logs')).filter((file) => file.startsWith(name));
  assert.is(logs.length, 1);
});

test('abort: the destination daemon dies during the move; calls held meanwhile run at the source', async () => {
  const doomed = await cluster.daemon();
  const { name, client, pid, started } = await counterOn(a);
  await client.incr(10);
  const slow = client.slow(1500);
  const moving = cluster.migrate(name, a, doomed);
  assert.ok(await waitFor(() => started.stderr().includes('serving -> quiescing'), 10_000), 'the server took the order');
  const held = client.incr(1);
  await new Promise((resolve) => setTimeout(resolve, 50));
  await stop(doomed.pid, 'SIGKILL');
  const result = await moving;
  assert.is(result.code, 9, result.stderr);
  assert.match(result.stderr, /MIGRATION_FAILED: (prepare|signal|quiesce|copy|start) failed: /);
  assert.is(await slow, 11);
  assert.is(await held, 12);
  await assertRolledBack(name, client, pid, 12);
});

test('one migration at a time; and never to the host the server is on', async () => {
  const { name, client, pid } = await counterOn(a);
  const slow = client.slow(1000);
  const first = cluster.migrate(name, a, b, ['--grace', '0.2']);
  await new Promise((resolve) => setTimeout(resolve, 200));
  const second = await cluster.migrate(name, a, b);
  assert.is(second.code, 9);
  assert.match(second.stderr, new RegExp(`^rpcmig migrate: MIGRATION_FAILED: order refused: ${name} is already migrating\\n$`));
  breakdown(await first);
  assert.is(await slow, 1);
  const self = await cluster.migrate(name, b, b);
  assertFailed(self, 'order', new RegExp(`${name} already lives on the daemon at ${b.address.replace(/\./g, '\\.')}`));
  assert.is(await client.get(), 1);
  void pid;
});

test('malformed migration requests are refused clearly, and the daemon goes on', async () => {
  const link = await openDaemon(b.address, loadKey(cluster.key.file));
  try {
    const refusal = (method: string, params: unknown[]) => link.call(method, params).then(() => undefined, (error: RpcmigError) => error.code);
    assert.is(await refusal('migrate', [42]), 'BAD_REQUEST');
    assert.is(await refusal('migrate', [{ name: 'x', to: 'no host:1:2' }]), 'BAD_REQUEST');
    assert.is(await refusal('migrate', [{ name: 'nobody', to: a.address }]), 'NO_SUCH_SERVER');
    assert.is(await refusal('prepare', [{ id: 'nothex', name: 'x' }]), 'BAD_REQUEST');
    assert.is(await refusal('prepare', [{ id: '0123456789abcdef', name: 'x', entry: '../escape.js', argv: [], execArgv: [], cwd: '', manifest: { entries: [] } }]), 'MIGRATION_FAILED');
    assert.is(await refusal('blob', ['0123456789abcdef', 'not pieces']), 'BAD_REQUEST');
    assert.is(await refusal('state', ['0123456789abcdef', -1, 'bytes', true]), 'BAD_REQUEST');
    assert.is(await refusal('state', ['0123456789abcdef', 0, Buffer.from('x'), true]), 'MIGRATION_FAILED');
    assert.is(await refusal('start', ['0123456789abcdef']), 'MIGRATION_FAILED');
    assert.is(await refusal('prestart', [{}]), 'MIGRATION_FAILED');
    assert.is(await refusal('standby', ['0123456789abcdef']), 'MIGRATION_FAILED');
    assert.is(await refusal('commit', [null]), 'MIGRATION_FAILED');
    assert.is(await refusal('snapshot', [{ id: 'x' }]), 'BAD_REQUEST');
    assert.is(await link.call('order', []), null);
    assert.is(await link.call('abort', ['0123456789abcdef', 'nothing to abort']), null);
  } finally {
    link.close();
  }
  assert.ok(Array.isArray((await cluster.ls(b)).servers), 'the daemon still answers');
});

test('SIGUSR2 from outside, with no order pending, is ignored with a log line', async () => {
  const started = await cluster.server(COUNTER, a, ['--name', 'signalled']);
  const client = await connect<Counter>('signalled', { daemon: a.address, keyFile: cluster.key.file });
  clients.push(client);
  await client.incr(1);
  process.kill(started.pid, 'SIGUSR2');
  assert.ok(await waitFor(() => started.stderr().includes('SIGUSR2 with no migration order pending; ignored'), 3000), started.stderr());
  assert.ok(isAlive(started.pid));
  assert.is(await client.incr(1), 2);
});

test.run();
