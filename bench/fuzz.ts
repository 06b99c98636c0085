// The fuzzer at length: FUZZ_CASES (default 20,000) seeded cases against a server's port and
// against a daemon's port before and after the handshake (see test/helpers/fuzz.ts). Records
// whether each process stayed up and answering, and its memory. Writes its section of
// bench/RESULTS.md.
//   node dist/bench/fuzz.js
import { Cluster } from '../test/helpers/cluster.js';
import { campaign, fuzzTargets } from '../test/helpers/fuzz.js';
import { machine, writeSection } from './results.js';

const CASES = Number(process.env.FUZZ_CASES) || 20_000;

async function main(): Promise<void> {
  const cluster = new Cluster();
  const rows: string[] = [];
  try {
    const { targets, close } = await fuzzTargets(cluster);
    for (const [i, { label, address, pid, answers, key }] of targets.entries()) {
      const seed = 11 + i;
      const started = performance.now();
      const result = await campaign(seed, CASES, address, pid, answers, key);
      const mb = (bytes: number) => (bytes / 2 ** 20).toFixed(1);
      rows.push(`| ${label} | ${seed} | ${result.cases} | ${result.failure ?? 'up and answering throughout'} | ${mb(result.before)} → ${mb(result.after)} MB | ${((performance.now() - started) / 1000).toFixed(0)} s |`);
      console.log(rows.at(-1));
    }
    await close();
  } finally {
    await cluster.close();
  }
  writeSection('fuzz', [
    '## bench/fuzz — seeded fuzzing of the network-facing ports',
    '',
    `Machine: ${machine()}. Command: \`node dist/bench/fuzz.js\` (FUZZ_CASES=${CASES}). Each case: a new connection carrying random bytes, a valid message mutated, a huge length prefix, a valid frame in 1–3-byte chunks, or half a frame and silence. Every 50 cases the process must be alive and answer a real call.`,
    '',
    '| target | seed | cases | outcome | RSS before → after | time |',
    '| --- | ---: | ---: | --- | --- | ---: |',
    ...rows,
  ].join('\n'));
}

void main().catch((error: Error) => {
  console.error(error);
  process.exitCode = 1;
});
