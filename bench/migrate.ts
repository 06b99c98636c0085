// Migration measured (issues 4 and 5), two daemons on loopback, a client calling throughout:
//   1. the paper's experiment: rdict with 1,000 words, 10 moves;
//   2. a dictionary of 1,000,000 words (~41 MB of state), 10 moves, against capture + restore
//      alone, with the peak memory of source and destination;
//   3. total and pause against state size, 1 KB to 64 MB, drawn in bench/migration.svg
//      beside the paper's projection.
// Prints tables and writes its section of bench/RESULTS.md.
//   node dist/bench/migrate.js
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect, type Client } from '../runtime/index.js';
import { monotonicMs } from '../runtime/migrating.js';
import { decodeState, encodeState } from '../runtime/state.js';
import type { DaemonProcess } from '../test/helpers/daemon.js';
import { breakdown, Cluster, FIXTURES, RDICT } from '../test/helpers/cluster.js';
import { ROOT } from '../test/helpers/process.js';
import { benchDaemons } from './hosts.js';
import { machine, median, writeSection } from './results.js';
import { drawChart } from './svg.js';

const BIGDICT = join(FIXTURES, 'bigdict', 'server.js');
const PAPER = { total_ms: 930, snapshot_ms: 80, copy_ms: 410 };
const MOVES = 10;
/** Words per state size of the sweep: about 1 KB, 16 KB, 256 KB, 4 MB, 16 MB and 64 MB. */
const SWEEP = [25, 400, 6_400, 100_000, 400_000, 1_600_000];

type Figures = Record<string, number | string>;
interface Move {
  figures: Figures;
  /** The longest call, in ms, that the client made while `rpcmig migrate` ran (and 100 ms after). */
  clientWorst: number;
  /** The longest of those calls that was in flight during the pause (the server's stop → the new host's first reply). */
  clientHeld: number;
  /** Memory of the source just before the move (its peak reset), and its peak during the move. */
  sourceIdle?: number;
  sourcePeak?: number;
  /** The destination's peak (its whole life: the restore) and its memory once serving. */
  destinationPeak?: number;
  destinationIdle?: number;
}
interface Lookup {
  lookup(word: string): string | null;
}

/** Calls longer than this are kept with their times, to be matched with a move's pause. */
const SLOW_CALL_MS = 1;

/**
 * A client calling `lookup` in a closed loop. Since the last `reset`: `worst` is the longest
 * call; `held(from, to)` the longest that was in flight between two instants of the host's
 * monotonic clock (a move's `stopped_at` and `answered_at`).
 */
function caller(client: Client<Lookup>, words: number): { worst: number; reset(): void; held(from: number, to: number): number; stop(): Promise<void> } {
  const state = { worst: 0, running: true, slow: [] as Array<[number, number]> };
  const loop = (async () => {
    for (let i = 0; state.running && i < 100_000_000; i++) {
      const sent = monotonicMs();
      if ((await client.lookup(`word${i % words}`)) === null) throw new Error(`word${i % words} lost`);
      const done = monotonicMs();
      state.worst = Math.max(state.worst, done - sent);
      if (done - sent > SLOW_CALL_MS) state.slow.push([sent, done]);
    }
  })();
  return {
    get worst() { return state.worst; },
    reset() { [state.worst, state.slow] = [0, []]; },
    held: (from, to) => Math.max(0, ...state.slow.filter(([sent, done]) => sent <= to && done >= from).map(([sent, done]) => done - sent)),
    async stop() { state.running = false; await loop; },
  };
}

/** The most memory a process has held (VmHWM), or holds now (VmRSS), in bytes. */
function memory(pid: number, field: 'VmHWM' | 'VmRSS'): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(status)?.[1] ?? 0) * 1024;
}

/** Starts a new peak from now (Linux: "5" to clear_refs resets VmHWM). */
function resetPeak(pid: number): void {
  writeFileSync(`/proc/${pid}/clear_refs`, '5');
}

/** `moves` moves of `name` between the two daemons while a client looks words up. */
async function moveMany(cluster: Cluster, hosts: DaemonProcess[], name: string, words: number, moves: number, measure = false): Promise<Move[]> {
  const client = await connect<Lookup>(name, { daemon: hosts[0].address, keyFile: cluster.key.file, timeout: 60_000 });
  const load = caller(client, words);
  const done: Move[] = [];
  try {
    for (let n = 0; n < moves; n++) {
      const [from, to] = [hosts[n % 2], hosts[(n + 1) % 2]];
      await new Promise((resolve) => setTimeout(resolve, 200));
      const source = measure ? (await cluster.serving(from, name)).pid : 0;
      if (measure) resetPeak(source);
      const sourceIdle = measure ? memory(source, 'VmRSS') : undefined;
      load.reset();
      const figures = breakdown(await cluster.migrate(name, from, to, ['--grace', '1']));
      const move: Move = { figures, clientWorst: 0, clientHeld: 0 };
      if (measure) {
        const destination = (await cluster.serving(to, name)).pid;
        Object.assign(move, { sourceIdle, sourcePeak: memory(source, 'VmHWM'), destinationPeak: memory(destination, 'VmHWM') });
        await new Promise((resolve) => setTimeout(resolve, 500));
        move.destinationIdle = memory(destination, 'VmRSS');
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
      move.clientWorst = load.worst;
      move.clientHeld = load.held(figures.stopped_at as number, figures.answered_at as number);
      done.push(move);
      const rss = measure ? `, source RSS ${mb(move.sourceIdle!)} → peak ${mb(move.sourcePeak!)} MB, destination peak ${mb(move.destinationPeak!)} → ${mb(move.destinationIdle!)} MB` : '';
      console.log(`${name} move ${n + 1}: total ${ms(figures.total_ms as number)} ms, pause ${ms(figures.pause_ms as number)} ms, client held ${ms(move.clientHeld)} ms, client worst ${ms(move.clientWorst)} ms${rss}`);
    }
  } finally {
    await load.stop();
    await client.close();
  }
  return done;
}

const ms = (x: number) => x.toFixed(1);
const mb = (bytes: number) => (bytes / 2 ** 20).toFixed(1);
const field = (moves: Move[], name: string) => median(moves.map((m) => m.figures[name] as number));

function moveTable(moves: Move[], paper: boolean): string[] {
  const lines = [
    '| move | quiesce ms | snapshot ms | copy ms | start ms | total ms | pause ms | client held ms | client worst ms | state bytes | program bytes sent |',
    '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  const row = (label: string, f: (name: string) => number, held: number, worst: number) =>
    `| ${label} | ${ms(f('quiesce_ms'))} | ${ms(f('snapshot_ms'))} | ${ms(f('copy_ms'))} | ${ms(f('start_ms'))} | ${ms(f('total_ms'))} | ${ms(f('pause_ms'))} | ${ms(held)} | ${ms(worst)} | ${f('state_bytes')} | ${f('program_bytes_sent')} |`;
  moves.forEach((m, i) => lines.push(row(String(i + 1), (name) => m.figures[name] as number, m.clientHeld, m.clientWorst)));
  lines.push(row('**median**', (name) => field(moves, name), median(moves.map((m) => m.clientHeld)), median(moves.map((m) => m.clientWorst))));
  if (paper) lines.push(`| paper (1993) | | ${PAPER.snapshot_ms} | ${PAPER.copy_ms} | | ${PAPER.total_ms} | | | | | |`);
  return lines;
}

/** Capture and restore of the same dictionary in this process, without a move. */
function captureRestoreAlone(words: number): { capture: number; restore: number } {
  const dict = new Map<string, string>();
  const pad = 'x'.repeat(12);
  for (let i = 0; i < words; i++) dict.set(`word${i}`, `meaning ${i} ${pad}`);
  const key = 'bigdict/server.ts#dict';
  const prints = new Map([[key, 'bench']]);
  const times = { capture: [] as number[], restore: [] as number[] };
  for (let round = 0; round < 3; round++) {
    const t0 = performance.now();
    const file = encodeState({ [key]: dict }, prints);
    const t1 = performance.now();
    decodeState(file, { [key]: 'bench' });
    times.capture.push(t1 - t0);
    times.restore.push(performance.now() - t1);
  }
  return { capture: median(times.capture), restore: median(times.restore) };
}

async function rdict(cluster: Cluster, hosts: DaemonProcess[]): Promise<string[]> {
  await cluster.server(RDICT, hosts[0]);
  const dict = await connect<{ insert(w: string, m: string): boolean }>('rdict', { daemon: hosts[0].address, keyFile: cluster.key.file });
  for (let i = 0; i < 1000; i++) await dict.insert(`word${i}`, `meaning ${i} xxxxxxxxxxxx`);
  await dict.close();
  const moves = await moveMany(cluster, hosts, 'rdict', 1000, MOVES);
  return [
    '### 1. rdict, 1,000 words, 10 moves (the paper\'s experiment)',
    '',
    'The first move to each host ships the program (fixtures/, with its node_modules); later moves find it in the destination\'s cache.',
    '',
    ...moveTable(moves, true),
    '',
    `Median total **${ms(field(moves, 'total_ms'))} ms** (goal ≤ 150; ${(field(moves, 'total_ms') / PAPER.total_ms).toFixed(3)} × the paper's 930 ms); median pause **${ms(field(moves, 'pause_ms'))} ms** (goal ≤ 15); the client's held call, median ${ms(median(moves.map((m) => m.clientHeld)))} ms.`,
  ];
}

async function big(cluster: Cluster, hosts: DaemonProcess[]): Promise<string[]> {
  const words = 1_000_000;
  await cluster.server(BIGDICT, hosts[0]);
  const filler = await connect<{ fill(n: number): number }>('bigdict', { daemon: hosts[0].address, keyFile: cluster.key.file, timeout: 60_000 });
  await filler.fill(words);
  await filler.close();
  const moves = await moveMany(cluster, hosts, 'bigdict', words, MOVES, true);
  const alone = captureRestoreAlone(words);
  const state = field(moves, 'state_bytes');
  const inMove = field(moves, 'snapshot_ms') + field(moves, 'copy_ms') + field(moves, 'start_ms');
  const over = (peakOf: (m: Move) => number, idleOf: (m: Move) => number) => Math.max(...moves.map((m) => peakOf(m) - idleOf(m)));
  const sourceOver = over((m) => m.sourcePeak!, (m) => m.sourceIdle!);
  const destinationOver = over((m) => m.destinationPeak!, (m) => m.destinationIdle!);
  const within = (x: number) => (x <= state * 3 ? 'within' : 'OVER');
  return [
    `### 2. A dictionary of 1,000,000 words (${mb(state)} MB of state), 10 moves`,
    '',
    ...moveTable(moves, false),
    '',
    `| figure | value | goal |`,
    '| --- | ---: | --- |',
    `| median total | ${ms(field(moves, 'total_ms'))} ms | ≤ 2,500 ms |`,
    `| median pause | ${ms(field(moves, 'pause_ms'))} ms | ≤ 2,000 ms |`,
    `| snapshot + copy + start (restore included), medians | ${ms(inMove)} ms | |`,
    `| capture + restore alone, same Map, this process | ${ms(alone.capture)} + ${ms(alone.restore)} = ${ms(alone.capture + alone.restore)} ms | |`,
    `| ratio | ${(inMove / (alone.capture + alone.restore)).toFixed(2)} × | ≤ 1.3 × |`,
    `| source: RSS before the move / peak during it, medians | ${mb(median(moves.map((m) => m.sourceIdle!)))} / ${mb(median(moves.map((m) => m.sourcePeak!)))} MB | |`,
    `| destination: RSS once serving / peak (the restore), medians | ${mb(median(moves.map((m) => m.destinationIdle!)))} / ${mb(median(moves.map((m) => m.destinationPeak!)))} MB | |`,
    `| largest peak − idle RSS: source / destination | ${mb(sourceOver)} / ${mb(destinationOver)} MB | ≤ state × 3 = ${mb(state * 3)} MB: ${within(sourceOver)} / ${within(destinationOver)} |`,
  ];
}

async function sweep(cluster: Cluster, hosts: DaemonProcess[]): Promise<string[]> {
  const points: Array<{ bytes: number; total: number; pause: number }> = [];
  const lines = ['| words | state bytes | total ms (median of 3) | pause ms (median of 3) | paper\'s projection ms |', '| ---: | ---: | ---: | ---: | ---: |'];
  for (const [i, words] of SWEEP.entries()) {
    const name = `sweep${i}`;
    await cluster.server(BIGDICT, hosts[0], ['--name', name]);
    const filler = await connect<{ fill(n: number): number }>(name, { daemon: hosts[0].address, keyFile: cluster.key.file, timeout: 60_000 });
    await filler.fill(words);
    await filler.close();
    const moves = await moveMany(cluster, hosts, name, words, 3);
    const point = { bytes: field(moves, 'state_bytes'), total: field(moves, 'total_ms'), pause: field(moves, 'pause_ms') };
    points.push(point);
    lines.push(`| ${words} | ${point.bytes} | ${ms(point.total)} | ${ms(point.pause)} | ${ms(paperProjection(point.bytes))} |`);
    const last = (await cluster.ls(hosts[1])).servers.find((s) => s.name === name);
    if (last) process.kill(last.pid, 'SIGTERM');
  }
  writeFileSync(join(ROOT, 'bench', 'migration.svg'), drawChart(points, paperProjection));
  return ['### 3. Total and pause against state size', '', '![total and pause against state size](migration.svg)', '', ...lines];
}

/**
 * The paper's extrapolation (0.93 s for rdict, about 1.4 s for 130 KB and 9 s for 1 MB moved),
 * as a line through its two projected points, in ms for `bytes` moved.
 */
function paperProjection(bytes: number): number {
  const perByte = (9000 - 1400) / (2 ** 20 - 130 * 1024);
  return 1400 + (bytes - 130 * 1024) * perByte;
}

async function main(): Promise<void> {
  const only = process.env.BENCH_ONLY;
  const cluster = new Cluster();
  const parts: string[] = [];
  try {
    const hosts = await benchDaemons(cluster, 2);
    if (!only || only === 'rdict') parts.push(...(await rdict(cluster, hosts)), '');
    if (!only || only === 'big') parts.push(...(await big(cluster, hosts)), '');
    if (!only || only === 'sweep') parts.push(...(await sweep(cluster, hosts)), '');
  } finally {
    await cluster.close();
  }
  const markdown = [
    '## bench/migrate — moves between two daemons on loopback, a client calling throughout',
    '',
    `Machine: ${machine()}. Command: \`node dist/bench/migrate.js\`. Moves alternate A→B and B→A with \`--grace 1\`; a client looks words up in a closed loop. "Client held" is the longest of its lookups that was in flight during the pause, placed by the breakdown's \`stopped_at\` and \`answered_at\` (the host's monotonic clock); "client worst" is the longest it saw while \`rpcmig migrate\` ran and for 100 ms after, which also counts lookups slowed outside the pause, as by the start of the command's own Node process. Fields as DESIGN §7: total = order → first reply from the new host; pause = source stops executing → new host answers.`,
    '',
    ...parts,
  ].join('\n');
  console.log(markdown);
  if (!only) writeSection('migrate', markdown);
}

void main().catch((error: Error) => {
  console.error(error);
  process.exitCode = 1;
});
