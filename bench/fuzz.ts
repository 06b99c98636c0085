// The fuzzer at length: FUZZ_CASES (default 20,000) seeded cases against a server's port and
// against a daemon's port before and after the handshake (see test/helpers/fuzz.ts). Records
// whether each process stayed up and answering, and its memory. Writes its section of
// bench/RESULTS.md.
//   node dist/bench/fuzz.js
// The server's liveness is asked of the built-in whereis: fuzzed calls may change the counter's state.
import { connect, invoke, WHEREIS } from '../runtime/index.js';
import { loadKey, openDaemon } from '../runtime/daemonlink.js';
import { Cluster, COUNTER } from '../test/helpers/cluster.js';
import { campaign, type Campaign } from '../test/helpers/fuzz.js';
import { machine, writeSection } from './results.js';

const CASES = Number(process.env.FUZZ_CASES) || 20_000;

async function main(): Promise<void> {
  const cluster = new Cluster();
  const rows: string[] = [];
  try {
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
    const targets: Array<[string, number, () => Promise<Campaign>]> = [
      ['server port', 11, () => campaign(11, CASES, server.ready[0], server.pid, async () => (await invoke(client, WHEREIS)) === server.ready[0])],
      ['daemon port, before the handshake', 12, () => campaign(12, CASES, daemon.address, daemon.pid, daemonAnswers)],
      ['daemon port, after the handshake', 13, () => campaign(13, CASES, daemon.address, daemon.pid, daemonAnswers, key)],
    ];
    for (const [label, seed, run] of targets) {
      const started = performance.now();
      const result = await run();
      const mb = (bytes: number) => (bytes / 2 ** 20).toFixed(1);
      rows.push(`| ${label} | ${seed} | ${result.cases} | ${result.failure ?? 'up and answering throughout'} | ${mb(result.before)} → ${mb(result.after)} MB | ${((performance.now() - started) / 1000).toFixed(0)} s |`);
      console.log(rows.at(-1));
    }
    await client.close();
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
