// Network faults during a move (issue 7), between hosts that are network namespaces on a
// bridge (a, b, c run daemons; d runs the clients and the CLI): the link to the destination cut
// mid-copy, a 1 Mbit link with delay and loss, a commit sent into a partition that heals, and
// orders that race for one server. The kernel has no sch_netem: the rate is a tbf qdisc, loss
// an iptables statistic rule, and delay an iptables NFQUEUE rule whose packets a process holds
// for the delay before the kernel lets them on (helpers/shaping.ts). Each case checks who
// serves afterwards, the state against what clients were told, and both spools.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { COUNTER, FIXTURES, frozen, startedBy } from './helpers/cluster.js';
import { CLI, tempDir, writeKey } from './helpers/daemon.js';
import { createHosts, firstMatch, requireNetns, setUpOnce, type Hosts, type RunResult } from './helpers/netns.js';
import { ROOT, waitFor } from './helpers/process.js';

const BIGDICT = join(FIXTURES, 'bigdict', 'server.js');
const CLIENT = join(ROOT, 'dist', 'test', 'programs', 'counter-client.js');
/** About 1.5 MB of state: two pieces of the copy, some 12 s at 1 Mbit. */
const WORDS = 22_000;
const WORD_BYTES = 50;
const STEP_MS = 10_000; // the daemons' default RPCMIG_STEP_TIMEOUT_MS
const QUIESCE_MS = 5_000;
/** How long a destination waits, hearing nothing of a move, before it drops it. */
const SILENCE_MS = QUIESCE_MS + STEP_MS;
const SETTLE_MS = 3_000;

const dir = tempDir();
const key = writeKey(dir);
const env = { ...process.env, RPCMIG_KEY_FILE: key.file };
let lab: Hosts;
const daemonPids = new Map<string, number>();

const daemonOf = (host: string): string => `${lab.host(host).address}:4111`;
const spool = (host: string, part: string): string => join(dir, host, part);
const entries = (path: string): string[] => (existsSync(path) ? readdirSync(path) : []);
const empty = (path: string): boolean => entries(path).length === 0;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** `rpcmig ARGS` on host d, with the cluster's key. */
function cli(args: string[], timeoutMs = 60_000): Promise<RunResult> {
  return lab.run('d', process.execPath, [CLI, ...args, '--key-file', key.file], { timeoutMs });
}

function migrate(name: string, from: string, to: string): Promise<RunResult> {
  return cli(['migrate', name, '--daemon', daemonOf(from), '--to', daemonOf(to), '--grace', '1', '--json']);
}

async function call(name: string, host: string, proc: string, ...args: unknown[]): Promise<unknown> {
  const result = await cli(['call', name, proc, ...args.map((a) => JSON.stringify(a)), '--daemon', daemonOf(host), '--json']);
  assert.is(result.code, 0, `${name}.${proc} via ${host}: ${result.stderr}`);
  return JSON.parse(result.stdout);
}

/** The server `name` as the daemon on `host` lists it and is not moving (undefined if none). */
async function serving(host: string, name: string): Promise<{ pid: number; address: string } | undefined> {
  const result = await cli(['ls', '--daemon', daemonOf(host), '--json']);
  assert.is(result.code, 0, result.stderr);
  const { servers } = JSON.parse(result.stdout) as { servers: Array<{ name: string; pid: number; address: string; state: string }> };
  return servers.find((s) => s.name === name && s.state === 'serving');
}

/** Starts a fixture server on host `host`, registered with that host's daemon. */
async function server(host: string, script: string, name: string): Promise<number> {
  const serverEnv = { ...env, RPCMIG_DAEMON: daemonOf(host), RPCMIG_HOST: lab.host(host).address };
  const child = lab.exec(host, process.execPath, [script, '--name', name], { env: serverEnv, cwd: join(ROOT, 'fixtures'), stdio: ['ignore', 'pipe', 'ignore'] });
  await firstMatch(child, /listening (\S+)/, 10_000);
  return child.pid!;
}

/** Increments `name` from host d with two pipelining clients for `ms`; resolves to what they saw. */
async function load(name: string, host: string, ms: number): Promise<{ acknowledged: number; errors: string[]; final: number }> {
  const result = await lab.run('d', process.execPath, [CLIENT, name, daemonOf(host), key.file, String(ms), '2'], { timeoutMs: ms + 60_000 });
  assert.is(result.code, 0, result.stdout + result.stderr);
  return JSON.parse(result.stdout) as { acknowledged: number; errors: string[]; final: number };
}

/** No state on its way in or out of `host` (its spool's arriving/ and leaving/ are empty). */
async function holdsNothing(host: string, timeoutMs: number): Promise<void> {
  const clean = () => empty(spool(host, 'arriving')) && empty(spool(host, 'leaving'));
  assert.ok(await waitFor(clean, timeoutMs, 200), `${host} keeps ${entries(spool(host, 'arriving'))} / ${entries(spool(host, 'leaving'))}`);
}

/** The id of the move leaving `host`, once its snapshot is written (renamed into place whole; the copy begins). */
/** The move under way from `host`, once its server has been signalled (its order is written). */
async function ordered(host: string): Promise<string> {
  let id: string | undefined;
  const written = () => (id = entries(spool(host, 'leaving')).find((entry) => existsSync(join(spool(host, 'leaving'), entry, 'order.json')))) !== undefined;
  assert.ok(await waitFor(written, 20_000, 50), 'the order was written');
  return id!;
}

/** The same, once the server wrote its snapshot to a file (a state larger than what comes inline). */
async function snapshotted(host: string): Promise<string> {
  let id: string | undefined;
  const written = () => (id = entries(spool(host, 'leaving')).find((entry) => existsSync(join(spool(host, 'leaving'), entry, 'state')))) !== undefined;
  assert.ok(await waitFor(written, 20_000, 50), 'the snapshot was written');
  return id!;
}

function assertFailed(result: RunResult, step: string, reason: RegExp, name: string, host: string): void {
  assert.is(result.code, 9, `exit 9; stderr: ${result.stderr}`);
  assert.is(result.stdout, '');
  assert.match(result.stderr, new RegExp(`^rpcmig migrate: MIGRATION_FAILED: ${step} failed: `));
  assert.match(result.stderr, reason);
  assert.ok(result.stderr.endsWith(`${name} serves on at ${daemonOf(host)}\n`), result.stderr);
}

setUpOnce(test, async () => {
  requireNetns();
  lab = await createHosts(['a', 'b', 'c', 'd']);
  for (const host of ['a', 'b', 'c']) {
    // C, as a source, freezes once between the destination's start and its own commit.
    const faults = host === 'c' ? { RPCMIG_FAILPOINTS: 'start.after=stop' } : {};
    const args = [CLI, 'daemon', '--listen', daemonOf(host), '--dir', join(dir, host), '--key-file', key.file];
    const timeouts = { RPCMIG_QUIESCE_TIMEOUT_MS: String(QUIESCE_MS), RPCMIG_SETTLE_AFTER_MS: String(SETTLE_MS) };
    const daemon = lab.exec(host, process.execPath, args, { env: { ...env, ...faults, ...timeouts }, stdio: ['ignore', 'pipe', 'ignore'] });
    await firstMatch(daemon, /listening on (\S+)/, 10_000);
    daemonPids.set(host, daemon.pid!);
  }
  // One move of the fixtures' program to b first: later moves there ship no program bytes,
  // so the faults below meet the state, not the program.
  await server('a', COUNTER, 'warm');
  const warm = await migrate('warm', 'a', 'b');
  if (warm.code !== 0) throw new Error(`warm-up a -> b: ${warm.stderr}`);
}, async () => {
  await lab?.destroy();
});

test('the link to the destination cut mid-copy: rolled back on the step time-out; cut off, the destination drops the move; healed, a retry at 1 Mbit completes', async () => {
  const pid = await server('a', BIGDICT, 'big');
  assert.is(await call('big', 'a', 'fill', WORDS, WORD_BYTES), WORDS);
  await lab.netem('b', { rateKbit: 1000 });
  try {
    const moving = migrate('big', 'a', 'b');
    const id = await snapshotted('a');
    await sleep(1_500);
    lab.cut('b');
    try {
      assertFailed(await moving, 'copy', new RegExp(`the daemon at ${daemonOf('b')} did not answer state within ${STEP_MS} ms`), 'big', 'a');
      assert.is((await serving('a', 'big'))?.pid, pid, 'the source serves on');
      assert.is(await call('big', 'a', 'size'), WORDS);
      await holdsNothing('a', 5_000);
      // The abort cannot reach b: b, hearing nothing more of the move, drops it on its own.
      const dropped = () => empty(spool('b', 'arriving')) && startedBy(daemonOf('b'), id).length === 0;
      assert.ok(await waitFor(dropped, SILENCE_MS + 10_000, 200), `b still holds move ${id}: ${entries(spool('b', 'arriving'))}, processes ${startedBy(daemonOf('b'), id)}`);
    } finally {
      lab.heal('b');
    }
    assert.is(await serving('b', 'big'), undefined);

    const retry = await migrate('big', 'a', 'b');
    assert.is(retry.code, 0, retry.stderr);
    const figures = JSON.parse(retry.stdout) as { state_bytes: number; copy_ms: number; program_bytes_sent: number };
    assert.ok(figures.state_bytes > 1.3e6, `state_bytes ${figures.state_bytes}`);
    assert.ok(figures.copy_ms > STEP_MS, `at 1 Mbit the copy outlasts one step time-out: ${figures.copy_ms} ms`);
    assert.is(figures.program_bytes_sent, 0);
  } finally {
    await lab.clearNetem('b');
  }
  assert.is(await call('big', 'b', 'size'), WORDS);
  assert.is(await call('big', 'b', 'lookup', `word${WORDS - 1}`), `meaning ${WORDS - 1} ${'x'.repeat(WORD_BYTES - 12)}`);
  await holdsNothing('b', 5_000);
});

test('1 Mbit, 30 ms delay and 2% loss on the destination: moves there and back complete; every acknowledged increment counted once', async () => {
  await server('a', COUNTER, 'shaped');
  await lab.netem('b', { rateKbit: 1000, delayMs: 30, lossPercent: 2 });
  try {
    const calls = load('shaped', 'a', 5_000);
    await sleep(1_000);
    for (const [from, to] of [['a', 'b'], ['b', 'a']]) {
      const result = await migrate('shaped', from, to);
      assert.is(result.code, 0, `${from} -> ${to}: ${result.stderr}`);
    }
    const { acknowledged, errors, final } = await calls;
    assert.equal(errors, []);
    assert.ok(acknowledged > 50, `only ${acknowledged} increments`);
    assert.is(final, acknowledged);
  } finally {
    await lab.clearNetem('b');
  }
  assert.ok(await serving('a', 'shaped'), 'a serves it');
  assert.is(await serving('b', 'shaped'), undefined);
  await holdsNothing('a', 5_000);
  await holdsNothing('b', 5_000);
});

test('C->B awaiting its commit: an order to move it on from B is refused; the commit sent into a partition of B that heals 3 s later: B alone serves, nothing lost', async () => {
  await server('c', COUNTER, 'split');
  const calls = load('split', 'c', 8_000);
  await sleep(1_000);
  const moving = migrate('split', 'c', 'b');
  const c = daemonPids.get('c')!;
  let id: string;
  let onward: RunResult;
  try {
    id = await ordered('c');
    assert.ok(await waitFor(() => frozen(c), 20_000, 50), 'the source daemon froze between start and commit');
    onward = await cli(['migrate', 'split', '--daemon', daemonOf('b'), '--to', daemonOf('a'), '--json']);
    lab.cut('b');
  } finally {
    process.kill(c, 'SIGCONT');
  }
  await sleep(3_000);
  lab.heal('b');
  const result = await moving;
  assert.is(onward.code, 9, onward.stderr);
  assert.is(onward.stderr, `rpcmig migrate: MIGRATION_FAILED: order refused: split is still arriving from ${daemonOf('c')}\n`);
  assert.is(result.code, 0, `the commit is final at the source: ${result.stderr}`);
  const { acknowledged, errors, final } = await calls;
  assert.equal(errors, []);
  assert.ok(acknowledged > 50, `only ${acknowledged} increments`);
  assert.is(final, acknowledged);
  assert.ok(await serving('b', 'split'), 'b serves it');
  assert.is(await serving('c', 'split'), undefined);
  await holdsNothing('b', SETTLE_MS + 10_000);
  await holdsNothing('c', 5_000);
  assert.is(startedBy(daemonOf('b'), id).length, 1, 'b runs the moved server alone');
  assert.is(await call('split', 'c', 'get'), final, 'a client starting at c finds it on b');
});

test('two orders at once for one server: exactly one proceeds, the other is refused; no state lost', async () => {
  await server('a', COUNTER, 'race');
  const slow = call('race', 'a', 'slow', 3_000);
  await sleep(500);
  const [toB, toC] = await Promise.all([migrate('race', 'a', 'b'), migrate('race', 'a', 'c')]);
  assert.equal([toB.code, toC.code].sort(), [0, 9], `${toB.stderr}${toC.stderr}`);
  const [won, lost] = toB.code === 0 ? ['b', toC] : ['c', toB];
  assert.is(lost.stderr, 'rpcmig migrate: MIGRATION_FAILED: order refused: race is already migrating\n');
  assert.is(await slow, 1);
  assert.ok(await serving(won, 'race'), `${won} serves it`);
  assert.is(await call('race', won, 'incr', 1), 2);
});

test('A->B ordered while B->C is under way: A, which it left, refuses (exit 5); the move goes on, nothing lost', async () => {
  await server('a', COUNTER, 'chain');
  assert.is(await call('chain', 'a', 'incr', 5), 5);
  assert.is((await migrate('chain', 'a', 'b')).code, 0);
  const slow = call('chain', 'b', 'slow', 3_000);
  await sleep(500);
  const onward = migrate('chain', 'b', 'c');
  await sleep(500);
  const back = await migrate('chain', 'a', 'b');
  assert.is(back.code, 5, back.stderr);
  assert.is(back.stdout, '');
  assert.is(back.stderr, `rpcmig migrate: NO_SUCH_SERVER: no server named "chain" on the daemon at ${daemonOf('a')}\n`);
  const result = await onward;
  assert.is(result.code, 0, result.stderr);
  assert.is(await slow, 6);
  assert.ok(await serving('c', 'chain'));
  assert.is(await call('chain', 'a', 'get'), 6);
});

test.run();
