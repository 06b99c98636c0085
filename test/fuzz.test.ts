// The network-facing ports under a bounded, seeded fuzzer (a small count here; `node
// dist/bench/fuzz.js` runs 20,000 cases a port): random bytes, mutated messages, huge length
// prefixes, frames in many chunks and half-open connections, on a server's port and on a
// daemon's port before and after the handshake. Neither process exits, both still answer,
// memory stays bounded.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
// The server's liveness is asked of the built-in whereis: fuzzed calls may change the counter's state.
import { connect, invoke, WHEREIS } from '../runtime/index.js';
import { loadKey, openDaemon } from '../runtime/daemonlink.js';
import { Cluster, COUNTER } from './helpers/cluster.js';
import { campaign } from './helpers/fuzz.js';

const CASES = Number(process.env.FUZZ_CASES) || 150;
const cluster = new Cluster();
test.after(() => cluster.close());

async function check(label: string, seed: number, address: string, pid: number, answers: () => Promise<boolean>, key?: Buffer): Promise<void> {
  const result = await campaign(seed, CASES, address, pid, answers, key);
  assert.is(result.failure, undefined, `${label}: ${result.failure}`);
  assert.ok(result.after < result.before * 2 + 64 * 2 ** 20, `${label}: memory grew from ${result.before} to ${result.after} bytes`);
}

test('fuzzed server port, daemon port before and after the handshake: both stay up and answer', async () => {
  const daemon = await cluster.daemon();
  const server = await cluster.server(COUNTER, daemon, ['--name', 'fuzzed']);
  const [host, port] = server.ready[0].split(':');
  const client = await connect<{ [WHEREIS](): string }>({ host, port: Number(port), exactlyOnce: false });
  const key = loadKey(cluster.key.file);
  const daemonAnswers = async () => {
    const link = await openDaemon(daemon.address, key);
    try {
      return ((await link.call('lookup', ['fuzzed'])) as { address: string }).address === server.ready[0];
    } finally {
      link.close();
    }
  };
  await check('server', 1, server.ready[0], server.pid, async () => (await invoke(client, WHEREIS)) === server.ready[0]);
  await check('daemon, unauthenticated', 2, daemon.address, daemon.pid, daemonAnswers);
  await check('daemon, authenticated', 3, daemon.address, daemon.pid, daemonAnswers, key);
  await client.close();
});

test.run();
