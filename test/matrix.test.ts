// The fault matrix (issue 7): a party of a move — source daemon, source server, destination
// daemon, destination server — crashes (SIGKILL), hangs (the step never ends, the process runs
// on) or freezes (SIGSTOP, continued later) at a step of DESIGN §3, by a failpoint. Beside each
// cell: which host serves once things settle, and what `rpcmig migrate` says. Each cell checks
// that exactly that host serves, that the counter equals the increments its client was told of
// (none lost, none doubled), that neither spool keeps anything of the move and no process the
// move started is left but the owner (nor the old server, once the destination owns the
// state), and that a retry without the fault succeeds. The source daemon's crashes from
// prepare to commit, which its restart settles, are in recovery.test.ts.
//
// Pairs that do not exist, and cells left out:
// - The source server has no order, prepare, copy, start or forwarding step (its daemon does
//   them); its steps are quiesce, snapshot and its cleanup (retiring after the grace period).
//   A crash before its snapshot takes the state along, as a crash without a move would: the
//   move fails, and nothing is left to serve or to check.
// - The destination server's one step is start (restore, register); after the commit it is a
//   server like any other. The destination daemon has no order, signal, quiesce or forwarding
//   step, and its prepare is the copy's first half (a hang there is the copy's hang).
// - A hang in a cleanup (a deletion that never ends) is a stuck file system, which nothing in
//   rpcmig can end: cleanups are crashed or frozen instead.
// - Hangs of the source daemon are ended by its move's watchdog (no progress for the longest
//   step time-out plus a step): before the commit point the move rolls back, after it the
//   watchdog finishes it. Hangs elsewhere are ended by the other side's step time-outs. The
//   source daemon's hangs after its prepare and its copy take the path of its hang after the
//   signal (the watchdog rolls back), and the destination daemon's hang once the moved server
//   registered the path of its freeze there (the start times out): they have no cells of their own.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { connect, type Client } from '../runtime/index.js';
import type { Failpoint } from '../runtime/failpoints.js';
import { breakdown, Cluster, COUNTER, frozen, startedBy, type Restartable } from './helpers/cluster.js';
import type { CliResult, DaemonProcess } from './helpers/daemon.js';
import { isAlive, stop, waitFor, type Started } from './helpers/process.js';

interface Counter {
  incr(by?: number): number;
  get(): number;
}

type Party = 'source daemon' | 'source server' | 'destination daemon' | 'destination server';

interface Cell {
  party: Party;
  point: Failpoint;
  action: 'crash' | 'hang' | 'stop' | 'drop' | 'corrupt';
  /** Who serves once things settle. */
  owner: 'source' | 'destination';
  /** What `rpcmig migrate` says: exit 0, exit 9 with this message, or another exit code with this message. */
  cli: 0 | RegExp | [number, RegExp];
  /** What a daemon tells the operator, in its log. */
  log?: ['source' | 'destination', RegExp];
  /** More environment of the source daemon. */
  sourceEnv?: NodeJS.ProcessEnv;
}

// Short enough for the hangs to end soon, long enough for a loaded machine's moves to make it.
const STEP_MS = 4000;
const START_MS = 5000;
const QUIESCE_MS = 3000;
/** The source's watchdog: the longest step time-out (start's, with a step for the answer), plus a step. */
const STALL_MS = START_MS + STEP_MS + STEP_MS;
const TIMEOUTS = {
  RPCMIG_STEP_TIMEOUT_MS: String(STEP_MS), RPCMIG_START_TIMEOUT_MS: String(START_MS), RPCMIG_QUIESCE_TIMEOUT_MS: String(QUIESCE_MS),
  RPCMIG_SETTLE_AFTER_MS: '3000',
};
/** A source daemon that has every snapshot written to a file: none is small enough to come inline. */
const FILE_STATE = { RPCMIG_INLINE_STATE_MAX: '0' };
const stuck = (step: string) => new RegExp(`${step} failed: the move made no progress for ${STALL_MS} ms`);
const lostDaemon = [3, /NO_DAEMON: the daemon at \S+ closed the connection before answering migrate/] as [number, RegExp];

const CELLS: Cell[] = [
  // Source daemon. Crashed before the destination was asked: the restart finds nothing under way.
  { party: 'source daemon', point: 'order.after', action: 'crash', owner: 'source', cli: lostDaemon },
  // Hung at any step before the commit point: the watchdog rolls the move back.
  { party: 'source daemon', point: 'order.after', action: 'hang', owner: 'source', cli: stuck('order') },
  { party: 'source daemon', point: 'signal.after', action: 'hang', owner: 'source', cli: stuck('quiesce') },
  // (The destination, its commit not come, asks the source and ends its copy once the source gave up.)
  { party: 'source daemon', point: 'start.after', action: 'hang', owner: 'source', cli: stuck('start'), log: ['destination', /rolled it back; cell\d+ serves there, not here/] },
  { party: 'source daemon', point: 'commit.before', action: 'hang', owner: 'source', cli: stuck('commit') },
  // Frozen after the copy and continued: the move finishes late, nothing is lost.
  { party: 'source daemon', point: 'copy.after', action: 'stop', owner: 'destination', cli: 0 },
  // The connection to the destination drops mid-copy: rolled back.
  { party: 'source daemon', point: 'copy.send', action: 'drop', owner: 'source', cli: /copy failed: / },
  // A byte of the state flipped on the way: the restore's checksum refuses it, and the move rolls back.
  { party: 'source daemon', point: 'copy.send', action: 'corrupt', owner: 'source', cli: /start failed: the server exited with code 1 before it served; its log ends:[^]*state file/ },
  // Hung past the commit point: the watchdog finishes the move (forwarding entry, the destination's word).
  { party: 'source daemon', point: 'commit.after', action: 'hang', owner: 'destination', cli: 0 },
  { party: 'source daemon', point: 'forward.after', action: 'hang', owner: 'destination', cli: 0 },
  // Crashed once the forwarding entry is written: the restart tells the destination and clears the order.
  { party: 'source daemon', point: 'forward.after', action: 'crash', owner: 'destination', cli: lostDaemon, log: ['source', /had moved to \S+; settled after a restart/] },
  { party: 'source daemon', point: 'cleanup.before', action: 'crash', owner: 'destination', cli: 0, log: ['source', /had moved to \S+; settled after a restart/] },

  // Source server. Hung or frozen with the order taken, before its snapshot: the quiesce times out, it serves on.
  { party: 'source server', point: 'quiesce.before', action: 'hang', owner: 'source', cli: new RegExp(`quiesce failed: the server did not finish its calls and snapshot within ${QUIESCE_MS} ms`) },
  { party: 'source server', point: 'quiesce.before', action: 'stop', owner: 'source', cli: new RegExp(`quiesce failed: the server did not finish its calls and snapshot within ${QUIESCE_MS} ms`) },
  // A state written to a file (none inline). The snapshot is whole on disk: the state outlives its process and moves on.
  { party: 'source server', point: 'snapshot.after', action: 'crash', owner: 'destination', cli: 0, log: ['source', /went away after writing its snapshot; moving the snapshot/], sourceEnv: FILE_STATE },
  // Hung or frozen before it reports: the quiesce times out, and the server serves on.
  { party: 'source server', point: 'snapshot.after', action: 'hang', owner: 'source', cli: new RegExp(`quiesce failed: the server did not finish its calls and snapshot within ${QUIESCE_MS} ms`), sourceEnv: FILE_STATE },
  { party: 'source server', point: 'snapshot.after', action: 'stop', owner: 'source', cli: new RegExp(`quiesce failed: the server did not finish its calls and snapshot within ${QUIESCE_MS} ms`), sourceEnv: FILE_STATE },
  // A small state, sent in the report: once sent it has left the process, which may crash, hang or freeze.
  { party: 'source server', point: 'snapshot.after', action: 'crash', owner: 'destination', cli: 0 },
  { party: 'source server', point: 'snapshot.after', action: 'hang', owner: 'destination', cli: 0 },
  { party: 'source server', point: 'snapshot.after', action: 'stop', owner: 'destination', cli: 0 },
  // Its grace period over: crashed, it is gone as it would have been; hung, its daemon ends it.
  { party: 'source server', point: 'retire.before', action: 'crash', owner: 'destination', cli: 0 },
  { party: 'source server', point: 'retire.before', action: 'hang', owner: 'destination', cli: 0, log: ['source', /did not exit 1000 ms after its commit; ending it/] },

  // Destination daemon. Before it started anything: rolled back; a restarted daemon clears its part.
  { party: 'destination daemon', point: 'arrive.copy.after', action: 'crash', owner: 'source', cli: /copy failed: / },
  { party: 'destination daemon', point: 'arrive.copy.after', action: 'hang', owner: 'source', cli: new RegExp(`copy failed: the daemon at \\S+ did not answer state within ${STEP_MS} ms`) },
  { party: 'destination daemon', point: 'arrive.copy.after', action: 'stop', owner: 'source', cli: new RegExp(`copy failed: the daemon at \\S+ did not answer state within ${STEP_MS} ms`) },
  // Before the standby is told to go on: rolled back; the standby ends with its daemon, or by the abort.
  { party: 'destination daemon', point: 'arrive.start.before', action: 'crash', owner: 'source', cli: /start failed: /, log: ['destination', /rolled it back; cell\d+ serves there, not here/] },
  { party: 'destination daemon', point: 'arrive.start.before', action: 'hang', owner: 'source', cli: new RegExp(`start failed: the daemon at \\S+ did not answer start within ${START_MS + STEP_MS} ms`) },
  // The moved server registered, the source never heard: rolled back, and the restarted
  // destination asks the source and ends its copy.
  { party: 'destination daemon', point: 'arrive.start.after', action: 'crash', owner: 'source', cli: /start failed: /, log: ['destination', /rolled it back; cell\d+ serves there, not here/] },
  { party: 'destination daemon', point: 'arrive.start.after', action: 'stop', owner: 'source', cli: new RegExp(`start failed: the daemon at \\S+ did not answer start within ${START_MS + STEP_MS} ms`) },
  // The source committed: the restarted destination holds its server until the source confirms.
  { party: 'destination daemon', point: 'arrive.commit.before', action: 'crash', owner: 'destination', cli: 0, log: ['destination', /committed it; cell\d+ serves here/] },
  // Hung on the commit: the commit never heard, the destination asks the source after a while.
  { party: 'destination daemon', point: 'arrive.commit.before', action: 'hang', owner: 'destination', cli: 0, log: ['destination', /committed it; cell\d+ serves here/] },
  { party: 'destination daemon', point: 'arrive.cleanup.before', action: 'crash', owner: 'destination', cli: 0, log: ['destination', /committed it; cell\d+ serves here/] },
  { party: 'destination daemon', point: 'arrive.cleanup.before', action: 'stop', owner: 'destination', cli: 0 },

  // Destination server: dies, hangs or freezes after restoring, before it serves: rolled back.
  { party: 'destination server', point: 'restore.after', action: 'crash', owner: 'source', cli: /start failed: the server killed by SIGKILL before it served/ },
  { party: 'destination server', point: 'restore.after', action: 'hang', owner: 'source', cli: new RegExp(`start failed: the server did not serve within ${START_MS} ms`) },
  { party: 'destination server', point: 'restore.after', action: 'stop', owner: 'source', cli: new RegExp(`start failed: the server did not serve within ${START_MS} ms`) },
];

const cluster = new Cluster();
test.after(() => cluster.close());

/** Increments one at a time until stopped; counts what was acknowledged and what failed. */
function load(client: Client<Counter>): { stop(): Promise<{ acked: number; failed: string[] }> } {
  let running = true;
  let acked = 0;
  const failed: string[] = [];
  const loop = (async () => {
    for (let round = 0; running && round < 100_000; round++) {
      await client.incr(1).then(() => acked++, (error: Error) => failed.push(error.message));
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      return { acked, failed };
    },
  };
}

function empty(dir: string): boolean {
  return !existsSync(dir) || readdirSync(dir).length === 0;
}

async function servingOn(daemon: DaemonProcess, name: string): Promise<number | undefined> {
  return (await cluster.ls(daemon)).servers.find((s) => s.name === name && s.state !== 'moved')?.pid;
}

function checkCli(result: CliResult, expected: Cell['cli']): void {
  if (expected === 0) {
    breakdown(result);
    return;
  }
  const [code, message] = expected instanceof RegExp ? [9, expected] : expected;
  assert.is(result.code, code, `exit ${code}; stderr: ${result.stderr}`);
  assert.ok(message.test(result.stderr), `rpcmig migrate says ${message}; it said: ${result.stderr}`);
}

/** The two hosts of a cell: each daemon as it runs now, with its spool and a clean restart. */
interface Hosts {
  a: DaemonProcess;
  b: DaemonProcess;
  src: Restartable;
  dst: Restartable;
  server: Started;
}

/** Runs the move with the fault; continues a frozen party once the others gave up, restarts a crashed daemon. */
async function provoke({ party, point, action }: Cell, hosts: Hosts, name: string): Promise<CliResult> {
  const moving = cluster.migrate(name, hosts.a, hosts.b, ['--grace', '1']);
  if (action === 'stop') {
    // The frozen process, found once the failpoint stopped it.
    const pidOf = (): number | undefined => ({
      'source daemon': hosts.a.pid, 'source server': hosts.server.pid, 'destination daemon': hosts.b.pid, 'destination server': startedBy(hosts.b.address).find(frozen),
    })[party];
    const froze = await waitFor(() => { const pid = pidOf(); return pid !== undefined && frozen(pid); }, 15_000);
    assert.ok(froze, `${party} froze at ${point}; source daemon:\n${hosts.a.stderr()}\ndestination daemon:\n${hosts.b.stderr()}`);
    const pid = pidOf()!;
    if (party === 'source daemon') await new Promise((resolve) => setTimeout(resolve, 1000));
    else await moving;
    if (isAlive(pid)) process.kill(pid, 'SIGCONT');
  }
  const result = await moving;
  if (action === 'crash' && party === 'source daemon') {
    assert.ok(await waitFor(() => !isAlive(hosts.a.pid), 5000), 'the failpoint killed the source daemon');
    hosts.a = await hosts.src.restart(TIMEOUTS);
  }
  if (action === 'crash' && party === 'destination daemon') {
    assert.ok(await waitFor(() => !isAlive(hosts.b.pid), 5000), 'the failpoint killed the destination daemon');
    hosts.b = await hosts.dst.restart(TIMEOUTS);
  }
  return result;
}

/** Exactly the owner serves, the daemon says what it did, and nothing of the move is left over. */
async function checkSettled(cell: Cell, { a, b, src, dst, server }: Hosts, name: string): Promise<void> {
  const { owner } = cell;
  // A restarted destination may hold its server until the source confirms.
  const [here, there] = owner === 'source' ? [a, b] : [b, a];
  await cluster.serving(here, name, 10_000);
  assert.ok(await waitFor(() => startedBy(b.address).length === (owner === 'destination' ? 1 : 0), 10_000), `processes the move started on the destination: ${startedBy(b.address)}`);
  assert.is(await servingOn(there, name), undefined, `only the ${owner} serves`);
  if (owner === 'destination') assert.ok(await waitFor(() => !isAlive(server.pid), 10_000), 'the old server is gone once its grace period is over');
  if (cell.log) {
    const [who, line] = cell.log;
    const daemon = who === 'source' ? a : b;
    assert.ok(await waitFor(() => line.test(daemon.stderr()), 10_000), `the ${who} daemon logs ${line}:\n${daemon.stderr()}`);
  }
  for (const spool of [src.spool, dst.spool]) {
    for (const part of ['leaving', 'arriving']) {
      assert.ok(await waitFor(() => empty(join(spool, part)), 10_000), `${join(spool, part)} is empty once settled`);
    }
  }
}

async function runCell(cell: Cell, index: number): Promise<void> {
  const { party, point, action, owner } = cell;
  const name = `cell${index}`;
  const fault = { RPCMIG_FAILPOINTS: `${point}=${action}` };
  const src = await cluster.restartable(`a${index}`, { ...TIMEOUTS, ...cell.sourceEnv, ...(party === 'source daemon' ? fault : {}) });
  const dst = await cluster.restartable(`b${index}`, { ...TIMEOUTS, ...(party.startsWith('destination') ? fault : {}) });
  const server = await cluster.server(COUNTER, src.daemon, ['--name', name], party === 'source server' ? fault : {});
  const hosts: Hosts = { a: src.daemon, b: dst.daemon, src, dst, server };
  const client = await connect<Counter>(name, { daemon: hosts.a.address, keyFile: cluster.key.file, timeout: 20_000 });
  try {
    await client.incr(5);
    const calls = load(client);
    checkCli(await provoke(cell, hosts, name), cell.cli);
    await checkSettled(cell, hosts, name);
    const { acked, failed } = await calls.stop();
    assert.equal(failed, [], 'no call failed');
    assert.is(await client.get(), 5 + acked, 'every acknowledged increment counted once');
    assert.ok(acked > 0, 'the client called throughout');

    // A retry without the fault (the destination's servers inherit its faults: it is restarted clean).
    if (party === 'destination server') {
      await stop(hosts.b.pid);
      hosts.b = await dst.restart(TIMEOUTS);
    }
    const [from, to] = owner === 'source' ? [hosts.a, hosts.b] : [hosts.b, hosts.a];
    breakdown(await cluster.migrate(name, from, to, ['--grace', '0.2']));
    assert.is(await client.incr(1), 6 + acked, 'a retry without the fault moves it');
  } catch (error) {
    // What the daemons did tells why a cell failed.
    if (error instanceof Error) error.message += `\nsource daemon:\n${hosts.a.stderr()}\ndestination daemon:\n${hosts.b.stderr()}`;
    throw error;
  } finally {
    await client.close();
    await cluster.end([hosts.a, hosts.b]);
  }
}

/**
 * Most of a cell is waiting for a time-out, so cells run PARALLEL at a time, each on its own
 * hosts and name; each test awaits its own cell's run.
 */
const PARALLEL = 3;
const free: Array<() => void> = [];
let running = 0;

async function inTurn(work: () => Promise<void>): Promise<void> {
  if (running >= PARALLEL) await new Promise<void>((resolve) => free.push(resolve));
  else running++;
  try {
    await work();
  } finally {
    const next = free.shift();
    if (next) next();
    else running--;
  }
}

let runs: Array<Promise<void>> = [];
test.before(() => {
  // uvu prints an error's `details` as text: an RpcmigError's (an object) would stop the suite.
  const fail = (error: unknown) => {
    if (error instanceof Error && error.name.startsWith('AssertionError')) return Promise.reject(error);
    const code = (error as { code?: unknown }).code;
    return Promise.reject(Object.assign(new Error(`${code ? `${String(code)}: ` : ''}${(error as Error).message ?? String(error)}`), { stack: (error as Error).stack }));
  };
  runs = CELLS.map((cell, index) => inTurn(() => runCell(cell, index)).catch(fail));
  // Each is awaited by its test; one that fails before its test's turn is not unhandled meanwhile.
  for (const run of runs) run.catch(() => undefined);
});

CELLS.forEach((cell, index) => {
  const does = { crash: 'crashes', hang: 'hangs', stop: 'freezes', drop: 'drops its connection', corrupt: 'corrupts a piece' }[cell.action];
  test(`${cell.party} ${does} at ${cell.point}: the ${cell.owner} serves, every call counted once`, () => runs[index]);
});

test.run();
