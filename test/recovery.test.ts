// A source daemon that stops in the middle of a move (a failpoint kills it) and is started
// again settles the move: committed if the destination's copy serves, rolled back if it never
// got that far. The server holds its calls meanwhile; none is lost or run twice.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { connect, type Client } from '../runtime/index.js';
import { parseFailpoints } from '../runtime/failpoints.js';
import { Cluster, COUNTER } from './helpers/cluster.js';
import { CLI, cleanEnv, type DaemonProcess } from './helpers/daemon.js';
import { isAlive, start, stop, waitFor, type Started } from './helpers/process.js';

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

const READY = /^rpcmig daemon listening on (\S+:\d+) /m;

/** A source daemon on a port of its own, started again on the same port and spool by `restart`. */
async function sourceDaemon(label: string, failpoints: string): Promise<{ daemon: DaemonProcess; restart(): Promise<DaemonProcess> }> {
  const spool = join(cluster.dir, label);
  const args = (listen: string) => [CLI, 'daemon', '--listen', listen, '--dir', spool, '--key-file', cluster.key.file];
  const first = await start(process.execPath, args('127.0.0.1:0'), { env: cleanEnv({ RPCMIG_FAILPOINTS: failpoints }), ready: READY });
  const address = first.ready[0];
  return {
    daemon: { ...first, address },
    restart: async () => ({ ...(await start(process.execPath, args(address), { env: cleanEnv(), ready: READY })), address }),
  };
}

async function counterOn(daemon: DaemonProcess, name: string): Promise<{ started: Started; client: Client<Counter> }> {
  const started = await cluster.server(COUNTER, daemon, ['--name', name]);
  const [host, port] = started.ready[0].split(':');
  const client = await connect<Counter>({ host, port: Number(port) });
  clients.push(client);
  return { started, client };
}

test('failpoint names are checked: a typo is an error, not a fault that never fires', () => {
  assert.equal([...parseFailpoints('copy.after=crash, commit.before=hang')], [['copy.after', 'crash'], ['commit.before', 'hang']]);
  assert.throws(() => parseFailpoints('copy.aftr=crash'), /"copy.aftr=crash" is not NAME=crash\|hang\|error/);
  assert.throws(() => parseFailpoints('copy.after=explode'), /not NAME=crash/);
});

test('the source daemon dies after the destination served: started again, it commits the move', async () => {
  const source = await sourceDaemon('dies-at-commit', 'commit.before=crash');
  const { started, client } = await counterOn(source.daemon, 'survivor');
  await client.incr(5);
  const moving = await cluster.migrate('survivor', source.daemon, b);
  assert.is.not(moving.code, 0, 'the order cannot succeed: its daemon died');
  assert.ok(await waitFor(() => !isAlive(source.daemon.pid), 5000), 'the failpoint killed the source daemon');
  const held = client.incr(1);
  const again = await source.restart();
  try {
    assert.ok(await waitFor(() => started.stderr().includes('registered again'), 10_000), started.stderr());
    assert.is(await held, 6, 'the held call ran once, at the destination');
    const there = await cluster.serving(b, 'survivor');
    assert.is((await client.where()).pid, there.pid);
    assert.equal((await cluster.ls(again)).forwards, [{ name: 'survivor', to: there.address }]);
    assert.match(again.stderr(), /committed after a restart/);
    assert.equal(readdirSync(join(cluster.dir, 'dies-at-commit', 'leaving')), []);
  } finally {
    await stop(again.pid);
  }
});

test('the source daemon dies after the copy, before the start: started again, it rolls the move back', async () => {
  const source = await sourceDaemon('dies-after-copy', 'copy.after=crash');
  const { started, client } = await counterOn(source.daemon, 'stayer');
  await client.incr(5);
  const moving = await cluster.migrate('stayer', source.daemon, b);
  assert.is.not(moving.code, 0);
  assert.ok(await waitFor(() => !isAlive(source.daemon.pid), 5000));
  const held = client.incr(1);
  const again = await source.restart();
  try {
    assert.is(await held, 6, 'the held call ran once, at the source');
    assert.is((await client.where()).pid, started.pid);
    assert.is((await cluster.ls(b)).servers.find((s) => s.name === 'stayer'), undefined, 'nothing of it serves at the destination');
    const arriving = join(cluster.dir, `host${cluster.daemons.indexOf(b)}`, 'spool', 'arriving');
    assert.ok(await waitFor(() => !existsSync(arriving) || readdirSync(arriving).length === 0, 5000), 'the destination removed what it received');
    assert.match(again.stderr(), /rolled back after a restart/);
    assert.is((await cluster.serving(again, 'stayer')).pid, started.pid);
  } finally {
    await stop(again.pid);
  }
});

test.run();
