// Signals from outside: SIGUSR1 must not open Node's inspector (a debugger anyone on the host
// could attach to) in a daemon or a server; both say so and go on.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { connect } from '../runtime/index.js';
import { Cluster, COUNTER } from './helpers/cluster.js';
import { isAlive, waitFor } from './helpers/process.js';

const cluster = new Cluster();
test.after(() => cluster.close());

test('SIGUSR1 to a daemon or a server leaves the inspector closed; both go on', async () => {
  const daemon = await cluster.daemon();
  const server = await cluster.server(COUNTER, daemon, ['--name', 'signals']);
  process.kill(daemon.pid, 'SIGUSR1');
  process.kill(server.pid, 'SIGUSR1');
  const said = (text: () => string) => waitFor(() => text().includes('SIGUSR1 ignored: the inspector stays closed'), 3000);
  assert.ok(await said(() => daemon.stderr()), daemon.stderr());
  assert.ok(await said(() => server.stderr()), server.stderr());
  for (const output of [daemon.stderr(), server.stderr()]) assert.not.match(output, /Debugger listening/);
  assert.ok(isAlive(daemon.pid) && isAlive(server.pid));
  const client = await connect<{ incr(): number }>('signals', { daemon: daemon.address, keyFile: cluster.key.file });
  assert.is(await client.incr(), 1);
  await client.close();
});

test.run();
