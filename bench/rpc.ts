// Calls per second and p50/p99 latency of `add(a, b)` for rpcmig, @grpc/grpc-js unary and
// node:http JSON POST (keep-alive), same machine, same run, each server in its own process.
// Prints a table and writes its section of bench/RESULTS.md.
//   node dist/bench/rpc.js                  the benchmark
//   node dist/bench/rpc.js serve SYSTEM     one server (what the benchmark starts)
import { performance } from 'node:perf_hooks';
import { startNode, stop, type Started } from '../test/helpers/process.js';
import { machine, writeSection } from './results.js';
import { SYSTEMS, type Caller } from './rpc-systems.js';

interface Row {
  label: string;
  connections: number;
  /** Calls each connection keeps in flight (closed loop: a caller sends again when answered). */
  inFlight: number;
}

const ROWS: readonly Row[] = [
  { label: '1 connection, 64 calls in flight', connections: 1, inFlight: 64 },
  { label: '16 connections, 1 call in flight each', connections: 16, inFlight: 1 },
  { label: '1 connection, 1 call at a time', connections: 1, inFlight: 1 },
];

/** BENCH_SYSTEMS=rpcmig,... runs only those (for quick comparisons; RESULTS.md is then left alone). */
const ONLY = process.env.BENCH_SYSTEMS?.split(',');
const RUN = SYSTEMS.filter((system) => !ONLY || ONLY.includes(system.name));
const WARMUP_MS = Number(process.env.BENCH_WARMUP_MS ?? 300);
const MEASURE_MS = Number(process.env.BENCH_MEASURE_MS ?? 2400);
/** Systems take turns within a row, so that a change in the machine's load hits them all alike. */
const ROUNDS = 3;
/** Latency samples kept per row and system; calls beyond it are still counted. */
const MAX_SAMPLES = 2_000_000;

interface Tally {
  samples: Float64Array;
  calls: number;
}

interface Result {
  callsPerSecond: number;
  p50: number;
  p99: number;
}

/** One closed-loop caller: sends, waits, records, until `end`; times only calls started after `from`. */
async function loop(caller: Caller, from: number, end: number, tally: Tally): Promise<void> {
  for (let i = 0; i < 1e9; i++) {
    const started = performance.now();
    if (started >= end) return;
    const sum = await caller.add(i, 1);
    if (sum !== i + 1) throw new Error(`add(${i}, 1) answered ${sum}`);
    if (started >= from) {
      if (tally.calls < MAX_SAMPLES) tally.samples[tally.calls] = performance.now() - started;
      tally.calls++;
    }
  }
}

/** One turn: every caller keeps `inFlight` calls going for a warm-up, then for `ms` measured. */
async function turn(callers: Caller[], row: Row, ms: number, tally: Tally): Promise<void> {
  const from = performance.now() + WARMUP_MS;
  await Promise.all(callers.flatMap((caller) => Array.from({ length: row.inFlight }, () => loop(caller, from, from + ms, tally))));
}

function summarise(tally: Tally): Result {
  const kept = tally.samples.subarray(0, Math.min(tally.calls, MAX_SAMPLES)).sort();
  const at = (q: number) => kept[Math.min(kept.length - 1, Math.floor(q * kept.length))] * 1000;
  return { callsPerSecond: tally.calls / (MEASURE_MS / 1000), p50: at(0.5), p99: at(0.99) };
}

async function measureRow(row: Row, addresses: Map<string, string>): Promise<Map<string, Result>> {
  const callers = new Map<string, Caller[]>();
  const tallies = new Map<string, Tally>();
  for (const system of RUN) {
    const address = addresses.get(system.name) ?? '';
    callers.set(system.name, await Promise.all(Array.from({ length: row.connections }, () => system.connect(address))));
    tallies.set(system.name, { samples: new Float64Array(MAX_SAMPLES), calls: 0 });
  }
  for (let round = 0; round < ROUNDS; round++) {
    for (const system of RUN) await turn(callers.get(system.name) ?? [], row, MEASURE_MS / ROUNDS, tallies.get(system.name)!);
  }
  for (const list of callers.values()) list.forEach((caller) => caller.close());
  return new Map(RUN.map((system) => [system.name, summarise(tallies.get(system.name)!)]));
}

function table(results: Map<string, Map<string, Result>>): string {
  const lines = ['| row | system | calls/s | p50 µs | p99 µs | calls/s ÷ rpcmig |', '| --- | --- | ---: | ---: | ---: | ---: |'];
  for (const [label, bySystem] of results) {
    const base = bySystem.get('rpcmig')?.callsPerSecond ?? NaN;
    for (const [name, result] of bySystem) {
      const cells = [label, name, Math.round(result.callsPerSecond).toLocaleString('en-US'), result.p50.toFixed(0), result.p99.toFixed(0), (result.callsPerSecond / base).toFixed(2)];
      lines.push(`| ${cells.join(' | ')} |`);
    }
  }
  return lines.join('\n');
}

async function main(): Promise<void> {
  const servers = new Map<string, Started>();
  const results = new Map<string, Map<string, Result>>();
  try {
    for (const system of RUN) servers.set(system.name, await startNode(__filename, { args: ['serve', system.name] }));
    const addresses = new Map([...servers].map(([name, server]) => [name, server.ready[0]]));
    for (const row of ROWS) {
      results.set(row.label, await measureRow(row, addresses));
      process.stderr.write(`${row.label}: done\n`);
    }
  } finally {
    await Promise.all([...servers.values()].map((server) => stop(server.pid)));
  }
  const text = table(results);
  process.stdout.write(`${text}\n`);
  if (ONLY) return;
  writeSection('rpc', [
    '## bench/rpc — calls/s and latency of `add(a, b)`: rpcmig vs @grpc/grpc-js unary vs node:http JSON POST',
    '',
    `Machine: ${machine()}. Command: \`node dist/bench/rpc.js\`. Each server in its own process, the`,
    `callers in the benchmark's; per row and system ${MEASURE_MS} ms measured, in ${ROUNDS} turns taken in`,
    `rotation with the other systems, each after ${WARMUP_MS} ms of warm-up.`,
    'Closed loop: each in-flight slot sends its next call when the previous one is answered. "64 calls',
    'in flight" on one connection is MessagePack-RPC pipelining for rpcmig and HTTP/2 streams for gRPC;',
    'node:http (HTTP/1.1, no pipelining) queues them on its one keep-alive socket.',
    '',
    text,
  ].join('\n'));
}

async function serveOne(name: string): Promise<void> {
  const system = SYSTEMS.find((candidate) => candidate.name === name);
  if (!system) throw new Error(`no system ${name}; one of ${SYSTEMS.map((s) => s.name).join(', ')}`);
  process.stdout.write(`listening ${await system.serve()}\n`);
}

const run = process.argv[2] === 'serve' ? serveOne(process.argv[3] ?? '') : main();
run.catch((error: unknown) => {
  process.stderr.write(`${error instanceof Error ? error.stack : String(error)}\n`);
  process.exit(1);
});
