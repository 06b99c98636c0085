// A source daemon that stops in the middle of a move (a failpoint kills it at each step in
// turn) and is started again settles the move: committed if the destination's copy serves,
// rolled back if it never got that far. The server holds its calls meanwhile; none is lost or
// run twice, nothing is left behind, and a retry without the fault succeeds.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { connect, type Client } from '../runtime/index.js';
import { parseFailpoints, type Failpoint } from '../runtime/failpoints.js';
import { breakdown, Cluster, COUNTER } from './helpers/cluster.js';
import type { DaemonProcess } from './helpers/daemon.js';
import { isAlive, stop, waitFor, type Started } from './helpers/process.js';

interface Counter {
  incr(by?: number): number;
  get(): number;
  where(): { pid: number; moves: number };
}

const cluster = new Cluster();
let b: DaemonProcess;
const clients: Array<{ close(): Promise<void> }> = [];
test.before(async () => {
  b = await cluster.daemon();
});
test.after(async () => {
  await Promise.all(clients.map((client) => client.close()));
  await cluster.close();
});

async function counterOn(daemon: DaemonProcess, name: string): Promise<{ started: Started; client: Client<Counter> }> {
  const started = await cluster.server(COUNTER, daemon, ['--name', name]);
  const [host, port] = started.ready[0].split(':');
  const client = await connect<Counter>({ host, port: Number(port) });
  clients.push(client);
  return { started, client };
}

test('failpoint names are checked: a typo is an error, not a fault that never fires', () => {
  assert.equal([...parseFailpoints('copy.after=crash, commit.before=hang')], [['copy.after', 'crash'], ['commit.before', 'hang']]);
  assert.throws(() => parseFailpoints('copy.aftr=crash'), /"copy.aftr=crash" is not NAME=crash\|hang\|stop\|error\|slow\|drop\|corrupt/);
  assert.throws(() => parseFailpoints('copy.after=explode'), /not NAME=crash/);
  assert.throws(() => parseFailpoints('copy.after=corrupt'), /corrupt applies where bytes are sent: copy.send; not copy.after/);
});

/**
 * The source daemon dies at each step (its failpoint crashes it), and is started again on the
 * same port and spool. Where the state must end up, written beside each step: before the
 * destination serves, the move rolls back; once it serves, the move is committed.
 */
const MATRIX: Array<[Failpoint, 'source' | 'destination']> = [
  ['prepare.after', 'source'],
  ['signal.after', 'source'],
  ['copy.after', 'source'],
  ['start.after', 'destination'],
  ['commit.before', 'destination'],
  ['commit.after', 'destination'],
];

for (const [point, owner] of MATRIX) {
  test(`the source daemon crashes at ${point}: started again, the ${owner} serves, every call counted once, and a retry succeeds`, async () => {
    const label = `crash-${point.replace('.', '-')}`;
    const source = await cluster.restartable(label, { RPCMIG_FAILPOINTS: `${point}=crash` });
    const { started, client } = await counterOn(source.daemon, label);
    await client.incr(5);
    const moving = await cluster.migrate(label, source.daemon, b);
    assert.is.not(moving.code, 0, 'the order cannot succeed: its daemon died');
    assert.ok(await waitFor(() => !isAlive(source.daemon.pid), 5000), 'the failpoint killed the source daemon');
    const held = client.incr(1);
    const again = await source.restart();
    try {
      assert.ok(await waitFor(() => started.stderr().includes('registered again'), 10_000), started.stderr());
      assert.is(await held, 6, 'the call made meanwhile ran once');
      const here = (await cluster.ls(again)).servers.find((s) => s.name === label && s.state === 'serving');
      const there = (await cluster.ls(b)).servers.find((s) => s.name === label && s.state === 'serving');
      const serving = owner === 'source' ? here : there;
      assert.ok(serving, `the ${owner} serves ${label}`);
      assert.is(owner === 'source' ? there : here, undefined, 'and only it');
      assert.is((await client.where()).pid, serving!.pid);
      if (owner === 'destination') assert.equal((await cluster.ls(again)).forwards.find((f) => f.name === label)?.to, there!.address);
      const arriving = join(b.spool, 'arriving');
      assert.ok(await waitFor(() => !existsSync(arriving) || readdirSync(arriving).length === 0, 5000), 'the destination keeps nothing of a move that did not happen');
      const leaving = join(source.spool, 'leaving');
      assert.ok(await waitFor(() => !existsSync(leaving) || readdirSync(leaving).length === 0, 5000), 'the source settled what it left under way');
      const [from, to] = owner === 'source' ? [again, b] : [b, again];
      breakdown(await cluster.migrate(label, from, to, ['--grace', '0.2']));
      assert.is(await client.incr(1), 7, 'a retry without the fault moves it');
    } finally {
      await cluster.ls(again).catch(() => undefined); // its servers are ended with the cluster's
      await stop(again.pid);
    }
  });
}

test.run();
