// The network-facing ports under a bounded, seeded fuzzer (a small count here; `node
// dist/bench/fuzz.js` runs 20,000 cases a port): random bytes, mutated messages, huge length
// prefixes, frames in many chunks and half-open connections, on a server's port and on a
// daemon's port before and after the handshake. Neither process exits, both still answer,
// memory stays bounded.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Cluster } from './helpers/cluster.js';
import { campaign, fuzzTargets } from './helpers/fuzz.js';

const CASES = Number(process.env.FUZZ_CASES) || 150;
const cluster = new Cluster();
test.after(() => cluster.close());

async function check(label: string, seed: number, address: string, pid: number, answers: () => Promise<boolean>, key?: Buffer): Promise<void> {
  const result = await campaign(seed, CASES, address, pid, answers, key);
  assert.is(result.failure, undefined, `${label}: ${result.failure}`);
  assert.ok(result.after < result.before * 2 + 64 * 2 ** 20, `${label}: memory grew from ${result.before} to ${result.after} bytes`);
}

test('fuzzed server port, daemon port before and after the handshake: both stay up and answer', async () => {
  const { targets, close } = await fuzzTargets(cluster);
  for (const [i, target] of targets.entries()) await check(target.label, i + 1, target.address, target.pid, target.answers, target.key);
  await close();
});

test.run();
