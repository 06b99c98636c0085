// The fault matrix (issue 7): a party of a move — source daemon, source server, destination
// daemon, destination server — crashes (SIGKILL) or freezes (SIGSTOP, continued later) at a
// step, by a failpoint. Beside each cell: which host serves once things settle, and what
// `rpcmig migrate` says. Each cell checks that exactly that host serves, that the counter
// equals the increments its client was told of (none lost, none doubled), that neither spool
// keeps anything of the move and no process the move started is left but the owner, and that
// a retry without the fault succeeds. The source daemon's crashes, which its restart settles,
// are in recovery.test.ts.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { connect, type Client } from '../runtime/index.js';
import type { Failpoint } from '../runtime/failpoints.js';
import { breakdown, Cluster, COUNTER, frozen, startedBy, type Restartable } from './helpers/cluster.js';
import type { CliResult, DaemonProcess } from './helpers/daemon.js';
import { isAlive, stop, waitFor } from './helpers/process.js';

interface Counter {
  incr(by?: number): number;
  get(): number;
}

type Party = 'source daemon' | 'source server' | 'destination daemon' | 'destination server';

interface Cell {
  party: Party;
  point: Failpoint;
  action: 'crash' | 'stop' | 'drop' | 'corrupt';
  /** Who serves once things settle. */
  owner: 'source' | 'destination';
  /** What `rpcmig migrate` says: exit 0, or exit 9 with this message. */
  cli: 0 | RegExp;
  /** What the daemon that settles the move tells the operator, in its log. */
  log?: ['source' | 'destination', RegExp];
}

const STEP_MS = 1500;
const START_MS = 2500;
const QUIESCE_MS = 2000;
const TIMEOUTS = {
  RPCMIG_STEP_TIMEOUT_MS: String(STEP_MS), RPCMIG_START_TIMEOUT_MS: String(START_MS), RPCMIG_QUIESCE_TIMEOUT_MS: String(QUIESCE_MS),
};

const CELLS: Cell[] = [
  // Frozen after the copy and continued: the move finishes late, nothing is lost.
  { party: 'source daemon', point: 'copy.after', action: 'stop', owner: 'destination', cli: 0 },
  // The connection to the destination drops mid-copy: rolled back.
  { party: 'source daemon', point: 'copy.send', action: 'drop', owner: 'source', cli: /copy failed: / },
  // A byte of the state flipped on the way: the restore's checksum refuses it, and the move rolls back.
  { party: 'source daemon', point: 'copy.send', action: 'corrupt', owner: 'source', cli: /start failed: the server exited with code 1 before it served; its log ends:[^]*state file/ },
  // The snapshot is whole on disk: the state outlives its process and moves on.
  { party: 'source server', point: 'snapshot.after', action: 'crash', owner: 'destination', cli: 0, log: ['source', /went away after writing its snapshot; moving the snapshot/] },
  // Frozen before it reports: the quiesce times out, and the continued server serves on.
  { party: 'source server', point: 'snapshot.after', action: 'stop', owner: 'source', cli: new RegExp(`quiesce failed: the server did not finish its calls and snapshot within ${QUIESCE_MS} ms`) },
  // Before the destination started anything: rolled back; the restarted daemon clears its part.
  { party: 'destination daemon', point: 'arrive.copy.after', action: 'crash', owner: 'source', cli: /copy failed: / },
  { party: 'destination daemon', point: 'arrive.copy.after', action: 'stop', owner: 'source', cli: new RegExp(`copy failed: the daemon at \\S+ did not answer state within ${STEP_MS} ms`) },
  // The moved server registered, the source never heard: rolled back, and the restarted
  // destination asks the source and ends its copy.
  { party: 'destination daemon', point: 'arrive.start.after', action: 'crash', owner: 'source', cli: /start failed: /, log: ['destination', /rolled it back; cell\d+ serves there, not here/] },
  { party: 'destination daemon', point: 'arrive.start.after', action: 'stop', owner: 'source', cli: new RegExp(`start failed: the daemon at \\S+ did not answer start within ${START_MS + STEP_MS} ms`) },
  // The source committed: the restarted destination holds its server until the source confirms.
  { party: 'destination daemon', point: 'arrive.commit.before', action: 'crash', owner: 'destination', cli: 0, log: ['destination', /committed it; cell\d+ serves here/] },
  { party: 'destination server', point: 'restore.after', action: 'crash', owner: 'source', cli: /start failed: the server killed by SIGKILL before it served/ },
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
  assert.is(result.code, 9, `exit 9 (MIGRATION_FAILED); stderr: ${result.stderr}`);
  assert.match(result.stderr, expected);
}

CELLS.forEach((cell, index) => {
  const { party, point, action, owner } = cell;
  const does = { crash: 'crashes', stop: 'freezes', drop: 'drops its connection', corrupt: 'corrupts a piece' }[action];
  test(`${party} ${does} at ${point}: the ${owner} serves, every call counted once`, async () => {
    const name = `cell${index}`;
    const fault = { RPCMIG_FAILPOINTS: `${point}=${action}` };
    const src: Restartable = await cluster.restartable(`a${index}`, { ...TIMEOUTS, ...(party === 'source daemon' ? fault : {}) });
    const dst: Restartable = await cluster.restartable(`b${index}`, { ...TIMEOUTS, ...(party.startsWith('destination') ? fault : {}) });
    let a = src.daemon;
    let b = dst.daemon;
    const server = await cluster.server(COUNTER, a, ['--name', name], party === 'source server' ? fault : {});
    const client = await connect<Counter>(name, { daemon: a.address, keyFile: cluster.key.file, timeout: 20_000 });
    try {
      await client.incr(5);
      const calls = load(client);
      const moving = cluster.migrate(name, a, b, ['--grace', '1']);

      if (action === 'stop') {
        // The frozen process, found once the failpoint stopped it; continued once the others gave up.
        const pidOf = (): number | undefined => ({
          'source daemon': a.pid, 'source server': server.pid, 'destination daemon': b.pid, 'destination server': startedBy(b.address).find(frozen),
        })[party];
        assert.ok(await waitFor(() => { const pid = pidOf(); return pid !== undefined && frozen(pid); }, 15_000), `${party} froze at ${point}`);
        const pid = pidOf()!;
        if (party === 'source daemon') await new Promise((resolve) => setTimeout(resolve, 1000));
        else await moving;
        if (isAlive(pid)) process.kill(pid, 'SIGCONT');
      }
      const result = await moving;
      if (party === 'destination daemon' && action === 'crash') {
        assert.ok(await waitFor(() => !isAlive(b.pid), 5000), 'the failpoint killed the destination daemon');
        b = await dst.restart(TIMEOUTS);
      }
      checkCli(result, cell.cli);

      // Exactly one host serves: the expected one (a restarted destination may hold its server until the source confirms).
      const [here, there] = owner === 'source' ? [a, b] : [b, a];
      await cluster.serving(here, name, 10_000);
      assert.ok(await waitFor(() => startedBy(b.address).length === (owner === 'destination' ? 1 : 0), 10_000), `processes the move started on the destination: ${startedBy(b.address)}`);
      assert.is(await servingOn(there, name), undefined, `only the ${owner} serves`);

      if (cell.log) {
        const [who, line] = cell.log;
        const daemon = who === 'source' ? a : b;
        assert.ok(await waitFor(() => line.test(daemon.stderr()), 5000), `the ${who} daemon logs ${line}:\n${daemon.stderr()}`);
      }
      const { acked, failed } = await calls.stop();
      assert.equal(failed, [], 'no call failed');
      assert.is(await client.get(), 5 + acked, 'every acknowledged increment counted once');
      assert.ok(acked > 0, 'the client called throughout');

      for (const spool of [src.spool, dst.spool]) {
        for (const part of ['leaving', 'arriving']) {
          assert.ok(await waitFor(() => empty(join(spool, part)), 10_000), `${join(spool, part)} is empty once settled`);
        }
      }

      // A retry without the fault (a destination that started faulty servers is restarted clean).
      if (party === 'destination server') {
        await stop(b.pid);
        b = await dst.restart(TIMEOUTS);
      }
      const [from, to] = owner === 'source' ? [a, b] : [b, a];
      breakdown(await cluster.migrate(name, from, to, ['--grace', '0.2']));
      assert.is(await client.incr(1), 6 + acked, 'a retry without the fault moves it');
    } finally {
      await client.close();
      for (const daemon of [a, b]) await cluster.ls(daemon).catch(() => undefined); // their servers end with the cluster
    }
  });
});

test.run();
