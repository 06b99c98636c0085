// A server that a move brought to a destination is looked up there only once the move is
// committed: until then its calls would run before the move is final, and be lost should the
// source roll it back. A destination that has not heard the commit yet asks the source.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { connect, RpcmigError } from '../runtime/index.js';
import { Cluster, COUNTER } from './helpers/cluster.js';

interface Counter {
  incr(by?: number): number;
  get(): number;
}

// Short, so that a hung commit is given up soon; long enough for a loaded machine's moves.
const TIMEOUTS = { RPCMIG_STEP_TIMEOUT_MS: '2000', RPCMIG_START_TIMEOUT_MS: '3000', RPCMIG_QUIESCE_TIMEOUT_MS: '2000' };

const cluster = new Cluster();
test.after(() => cluster.close());

/** Waits until `check` holds, asking every 50 ms, at most `timeout` ms. */
async function until(check: () => Promise<boolean>, timeout: number): Promise<boolean> {
  const deadline = Date.now() + timeout;
  for (let round = 0; round < 1000 && Date.now() < deadline; round++) {
    if (await check()) return true;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return false;
}

/** The state of `name` in the daemon's listing, if it is registered there. */
async function stateOn(daemon: Parameters<Cluster['ls']>[0], name: string): Promise<string | undefined> {
  return (await cluster.ls(daemon)).servers.find((server) => server.name === name)?.state;
}

async function lookupError(name: string, daemon: string): Promise<RpcmigError> {
  try {
    const client = await connect(name, { daemon, keyFile: cluster.key.file });
    await client.close();
  } catch (error) {
    return error as RpcmigError;
  }
  throw new Error(`a lookup of ${name} at ${daemon} found it`);
}

test('until its move commits, a lookup at the destination does not find the server the move brought; rolled back, it never does', async () => {
  const a = await cluster.daemon({ ...TIMEOUTS, RPCMIG_FAILPOINTS: 'commit.before=hang' });
  const b = await cluster.daemon(TIMEOUTS);
  await cluster.server(COUNTER, a, ['--name', 'held']);
  const client = await cluster.connect<Counter>('held', a, { timeout: 30_000 });
  assert.is(await client.incr(1), 1);
  const moving = cluster.migrate('held', a, b);
  // Restored and registered at the destination; the source hangs before its commit.
  assert.ok(await until(async () => (await stateOn(b, 'held')) === 'arriving', 10_000), 'the moved server registers as arriving');
  const refused = await lookupError('held', b.address);
  assert.is(refused.code, 'MIGRATING');
  assert.match(refused.message, /held is arriving here by a move not committed yet; ask again/);
  // A call made meanwhile is held at the source, and runs there once the move is rolled back.
  const held = client.incr(10);
  const result = await moving;
  assert.is.not(result.code, 0, 'the move was rolled back');
  assert.match(result.stderr, /commit failed: the move made no progress/);
  assert.is(await held, 11);
  assert.is(await client.get(), 11, 'no call ran anywhere but at the source');
  assert.ok(await until(async () => (await stateOn(b, 'held')) === undefined, 10_000), 'the destination ended what the move started');
  assert.is((await lookupError('held', b.address)).code, 'NO_SUCH_SERVER');
});

test('a lookup at a destination that has not heard the commit asks the source, and finds the server once committed', async () => {
  const a = await cluster.daemon(TIMEOUTS);
  // The commit reaches the destination's daemon, which hangs before it records it.
  const b = await cluster.daemon({ ...TIMEOUTS, RPCMIG_FAILPOINTS: 'arrive.commit.before=hang' });
  await cluster.server(COUNTER, a, ['--name', 'told']);
  const client = await cluster.connect<Counter>('told', a);
  assert.is(await client.incr(2), 2);
  const result = await cluster.migrate('told', a, b);
  assert.is(result.code, 0, result.stderr);
  assert.is(await stateOn(b, 'told'), 'arriving', 'not heard committed at the destination');
  const found = await cluster.connect<Counter>('told', b);
  assert.is(await found.incr(3), 5, 'found where it moved, with its state');
  assert.is(await stateOn(b, 'told'), 'serving', 'confirmed by the source');
  assert.is(await client.get(), 5, 'the first client follows it there');
});

test.run();
