// Program shipping figures (issue 5): (a) manifest, copy and materialisation of a 10 MB tree of
// 1,000 files in one process (first moves into an empty store, creating files and into blanks;
// a second move); (b) a real move of a ~13 MB program through two daemons on loopback, first
// and repeated, beside the same for a ~0.3 MB program; (c) the least a 10 KB file costs here,
// and what writing such files reaches on one worker thread and on two; (d) the first move of a
// typical TypeScript app, shipping what it needs against its whole root. Prints tables and
// writes its section of bench/RESULTS.md.
//   node dist/bench/transfer.js
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, cpSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { BlobReceiver, BlobStore, buildManifest, manifestId, materialize, sendBlobs } from '../daemon/transfer.js';
import { DEFAULT_BLANKS } from '../daemon/blanks.js';
import { OPT_OUT, TOOL_CACHE } from '../daemon/packages.js';
import { breakdown, Cluster } from '../test/helpers/cluster.js';
import { ROOT } from '../test/helpers/process.js';
import { onThreads, writeIntoBlank } from './floor.js';
import { benchDaemons, blanksMade } from './hosts.js';
import { machine, median, writeSection } from './results.js';

const FILE_BYTES = 10_000;
const MIB = 2 ** 20;
// Round trips after the first move, and fresh pairs of daemons per program: every figure of
// (b) is a median, since file creation costs vary several-fold on a shared disk.
const ROUND_TRIPS = 5;
const TRIALS = 3;
// Rounds of (c)'s writing on worker threads.
const THREAD_ROUNDS = 5;
// How long the server serves before its first move, as a server runs a while before it is
// moved: its daemon walks its tree 0.2 s after it registered (see daemon/programs.ts, `ahead`).
const FIRST_MOVE_AFTER_MS = 2000;

/** `count` random files of `bytes` each under `dir`, 20 to a package, with old modification times. */
function addFiles(dir: string, count: number, bytes: number, prefix: string): void {
  // Old modification times: a tree just written is not cached (the racy-hash guard).
  const old = new Date(Date.now() - 60_000);
  for (let i = 0; i < count; i++) {
    const pkg = join(dir, `${prefix}${Math.floor(i / 20)}`, 'lib');
    mkdirSync(pkg, { recursive: true });
    writeFileSync(join(pkg, `f${i % 20}.js`), randomBytes(bytes));
    utimesSync(join(pkg, `f${i % 20}.js`), old, old);
  }
}

function treeBytes(dir: string): { files: number; bytes: number } {
  let files = 0;
  let bytes = 0;
  for (const name of readdirSync(dir, { recursive: true })) {
    const st = statSync(join(dir, String(name)));
    if (st.isFile()) [files, bytes] = [files + 1, bytes + st.size];
  }
  return { files, bytes };
}

// Measured on the code before this one, interleaved with runs of the current code on the same
// machine (file creation costs vary several-fold here), and with a profile of one first move.
const WHERE = 'Where the first move\'s copy time goes: the destination daemon\'s thread is busy throughout (a profile of one first move of the big program: decoding the batches\' frames about a quarter, hashing a sixth, the file calls two fifths). Creating a file was the largest part: this ext4 has no journal, so the kernel finds a new inode by skipping every inode freed in the last minutes (`recently_deleted`: an `openat(O_CREAT)` takes up to 0.6 ms on a host that deletes many files, as (a) shows); a blank turns it into an open of a file that exists. Blobs are written with synchronous calls, one blob that arrives whole per turn of the event loop (open, write, fchmod, futimes, close, rename: ~0.1 ms for 10 KB here, against ~0.3 ms as six round trips through the thread pool). What is left is ~0.25 ms of the destination\'s thread per 10 KB file; 200 MB/s would need 0.07 ms per file from end to end.';

const BEFORE = 'Against the code of commit 07a9d9d (no blanks; every blob written through the thread pool; the walk at the daemon\'s priority; a program that arrived hashed in full at its next move), same machine, runs interleaved, before / this code: (b) the big program\'s first move copies at 23, 27 MB/s / 38, 39, 37 MB/s; repeated move, big ÷ small: 1.66, 1.49 / 1.12, 0.99, 1.30, and earlier the same day 1.42, 1.56, 1.48 / 0.96, 1.26 (medians of the five: 1.49 / 1.12); (a) a first move\'s copy 1,107.6, 516.4 ms / 147.4, 190.3, 186.7 ms into blanks (603.3, 241.6, 686.8 ms creating files).';

const WATCHED = 'Where a repeated move\'s extra time went, and what the watch changed: the source walked the big program\'s tree at every move, 894 files listed and stat\'ed in its walking thread, 20–90 ms beside the move on two cores, and the commit waited for a walk still running (up to 18 ms in a traced run). A tree whose directories are all watched (inotify) and saw no event since its last walk is not listed again. Against commit d337a7b (the tree listed at every move), same machine, runs interleaved, before / this code: repeated move, big ÷ small: 1.16, 1.07, 1.17, 1.16, 1.16 / 0.99, 1.10, 1.01, 0.98, 0.95 (medians 1.16 / 0.99).';

async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const start = performance.now();
  const result = await fn();
  return [result, performance.now() - start];
}

const mbps = (bytes: number, ms: number): string => (bytes === 0 ? '-' : (bytes / MIB / (ms / 1000)).toFixed(0));

/** (a) One move of the tree inside this process: manifest, copy, materialise. */
async function inProcess(root: string, store: BlobStore, programs: string, label: string): Promise<string[]> {
  const [manifest, manifestMs] = await timed(() => buildManifest(root, { exclude: [] }));
  const receiver = new BlobReceiver(store, manifest);
  const [sent, copyMs] = await timed(async () =>
    sendBlobs(root, manifest, await store.missing(manifest), (pieces) => receiver.receive(pieces)),
  );
  const dest = join(programs, `${manifestId(manifest).slice(0, 12)}-${label}`);
  const [, materializeMs] = await timed(() => materialize(manifest, store, dest));
  return [label, String(manifest.entries.length), manifestMs.toFixed(1), copyMs.toFixed(1), String(sent), mbps(sent, copyMs), materializeMs.toFixed(1)];
}

async function partA(base: string): Promise<string> {
  const root = join(base, 'app');
  mkdirSync(root);
  writeFileSync(join(root, 'package.json'), '{"name":"bench"}');
  addFiles(join(root, 'node_modules'), 1000, FILE_BYTES, 'pkg');
  const creating = await BlobStore.open(join(base, 'spool0'));
  const blanks = await BlobStore.open(join(base, 'spool1'), { blanks: DEFAULT_BLANKS });
  await blanksMade(() => blanks.blanks.count, () => blanks.blankDirs.count);
  for (const n of [0, 1]) mkdirSync(join(base, `spool${n}`, 'programs'));
  const rows = [
    await inProcess(root, creating, join(base, 'spool0', 'programs'), 'first, creating files'),
    await inProcess(root, blanks, join(base, 'spool1', 'programs'), 'first, into blanks'),
    await inProcess(root, blanks, join(base, 'spool1', 'programs'), 'second'),
  ];
  blanks.close();
  return table(['move', 'entries', 'manifest ms', 'copy ms', 'bytes sent', 'copy MB/s', 'materialise ms'], rows);
}

/**
 * A copy of fixtures/ (the counter server, rpcmig, msgpackr) as a program root. `big` adds
 * ~10 MB under node_modules; otherwise msgpackr is cut to what `require('msgpackr')` loads and
 * rpcmig to its runtime.
 */
function makeProgram(dir: string, big: boolean): void {
  const from = join(ROOT, 'fixtures');
  for (const part of ['package.json', 'dist', 'node_modules']) cpSync(join(from, part), join(dir, part), { recursive: true });
  const modules = join(dir, 'node_modules');
  if (big) {
    addFiles(join(modules, 'bench-extra'), 800, FILE_BYTES, 'pkg');
    addFiles(join(modules, 'bench-extra-large'), 2, MIB, 'pkg');
    return;
  }
  for (const name of readdirSync(join(modules, 'msgpackr'))) {
    if (name !== 'package.json' && name !== 'dist') rmSync(join(modules, 'msgpackr', name), { recursive: true });
  }
  for (const name of readdirSync(join(modules, 'msgpackr', 'dist'))) {
    if (name !== 'node.cjs') rmSync(join(modules, 'msgpackr', 'dist', name));
  }
  rmSync(join(modules, 'rpcmig', 'dist', 'transformer'), { recursive: true });
  for (const name of readdirSync(join(modules, 'rpcmig', 'dist', 'runtime'))) {
    if (!name.endsWith('.js')) rmSync(join(modules, 'rpcmig', 'dist', 'runtime', name));
  }
}

interface Moves {
  files: number;
  bytes: number;
  first: Record<string, number | string>;
  /** The repeated moves to the first destination (its cache holds the program). */
  again: Array<Record<string, number | string>>;
  /** The first move back to A, where the program started: A takes its files from the tree it walked. */
  back?: Record<string, number | string>;
}

/** (b) Moves the program `make` writes into `dir` A→B, then (B→A, A→B) `roundTrips` times, through real daemons. */
async function twoDaemons(dir: string, make: (dir: string) => void, roundTrips = ROUND_TRIPS): Promise<Moves> {
  mkdirSync(dir);
  make(dir);
  const cluster = new Cluster();
  try {
    const [a, b] = await benchDaemons(cluster, 2);
    const name = 'bench';
    await cluster.server(join(dir, 'dist', 'counter', 'server.js'), a, ['--name', name]);
    await new Promise((resolve) => setTimeout(resolve, FIRST_MOVE_AFTER_MS));
    const first = breakdown(await cluster.migrate(name, a, b, ['--grace', '0.2']));
    const again: Moves['again'] = [];
    let back: Moves['back'];
    for (let n = 0; n < roundTrips; n++) {
      const returned = breakdown(await cluster.migrate(name, b, a, ['--grace', '0.2']));
      back ??= returned;
      again.push(breakdown(await cluster.migrate(name, a, b, ['--grace', '0.2'])));
    }
    return { ...treeBytes(dir), first, again, back };
  } finally {
    await cluster.close();
  }
}

async function partB(base: string): Promise<{ markdown: string; moves: string; ratio: number; throughput: number }> {
  const runs = { small: [] as Moves[], big: [] as Moves[] };
  for (let trial = 0; trial < TRIALS; trial++) {
    runs.small.push(await twoDaemons(join(base, `small${trial}`), (dir) => makeProgram(dir, false)));
    runs.big.push(await twoDaemons(join(base, `big${trial}`), (dir) => makeProgram(dir, true)));
  }
  const first = (ms: Moves[], field: string) => median(ms.map((m) => m.first[field] as number));
  const again = (ms: Moves[], field: string) => median(ms.flatMap((m) => m.again.map((f) => f[field] as number)));
  const throughput = (ms: Moves[]) => median(ms.map((m) => (m.first.program_bytes_sent as number) / MIB / ((m.first.copy_ms as number) / 1000)));
  const row = (label: string, ms: Moves[]) => [
    label, String(ms[0].files), (ms[0].bytes / MIB).toFixed(2), String(first(ms, 'program_bytes_sent')), first(ms, 'copy_ms').toFixed(1),
    throughput(ms).toFixed(0), first(ms, 'total_ms').toFixed(1), String(Math.max(...ms.flatMap((m) => m.again.map((f) => f.program_bytes_sent as number)))),
    again(ms, 'copy_ms').toFixed(1), again(ms, 'total_ms').toFixed(1),
    String(Math.max(...ms.map((m) => m.back!.program_bytes_sent as number))), median(ms.map((m) => m.back!.total_ms as number)).toFixed(1),
  ];
  const markdown = table(
    ['program', 'files', 'MiB', 'first: bytes sent', 'first: copy ms', 'first: copy MB/s', 'first: total ms', 'again: bytes sent (max)', 'again: copy ms', 'again: total ms', 'first back: bytes sent (max)', 'first back: total ms'],
    [row('small', runs.small), row('big', runs.big)],
  );
  const each = (ms: Moves[]) => ms.map((m) => m.again.map((f) => (f.total_ms as number).toFixed(0)).join(' ')).join(' / ');
  const moves = `- again, total_ms of each move to B, per pair of daemons in order: small ${each(runs.small)}; big ${each(runs.big)}`;
  return { markdown, moves, ratio: again(runs.big, 'total_ms') / again(runs.small, 'total_ms'), throughput: throughput(runs.big) };
}

/**
 * The counter server as a TypeScript project keeps it: this repository's node_modules (its
 * compiler, type definitions, test runner and gRPC, for the comparisons of bench/grpc) beside
 * the server's dependencies, rpcmig and msgpackr, which the program's package.json declares,
 * and this repository's devDependencies declared as the program's. `whole`: it opts out (OPT_OUT).
 */
function makeTypicalApp(dir: string, whole: boolean): void {
  const from = join(ROOT, 'fixtures');
  for (const part of ['package.json', 'dist', 'node_modules']) cpSync(join(from, part), join(dir, part), { recursive: true });
  for (const name of readdirSync(join(ROOT, 'node_modules'))) {
    if (!existsSync(join(dir, 'node_modules', name))) cpSync(join(ROOT, 'node_modules', name), join(dir, 'node_modules', name), { recursive: true, verbatimSymlinks: true });
  }
  const own = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { devDependencies: Record<string, string> };
  const app = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as Record<string, unknown>;
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ ...app, devDependencies: own.devDependencies, ...(whole ? { rpcmig: { [OPT_OUT]: true } } : {}) }, null, 2));
}

/** (d) First moves of the typical app, shipping what it needs and, as before, its whole root. */
async function partD(base: string): Promise<{ markdown: string; bytes: number; cache: number; ratio: number }> {
  const runs = { needed: [] as Moves[], whole: [] as Moves[] };
  for (let trial = 0; trial < TRIALS; trial++) {
    runs.whole.push(await twoDaemons(join(base, `whole${trial}`), (dir) => makeTypicalApp(dir, true), 0));
    runs.needed.push(await twoDaemons(join(base, `needed${trial}`), (dir) => makeTypicalApp(dir, false), 0));
  }
  const entries = async (dir: string) => (await buildManifest(dir, { exclude: [] })).entries.length;
  const first = (ms: Moves[], field: string) => median(ms.map((m) => m.first[field] as number));
  const row = async (label: string, ms: Moves[], dir: string) => [
    label, String(await entries(dir)), (first(ms, 'program_bytes_sent') / MIB).toFixed(2), first(ms, 'copy_ms').toFixed(1),
    first(ms, 'total_ms').toFixed(1), ms.map((m) => (m.first.total_ms as number).toFixed(0)).join(', '),
  ];
  const markdown = table(['what travels', 'entries', 'first: MiB sent', 'first: copy ms', 'first: total ms', 'first: total ms of each'], [
    await row('what the server needs (default)', runs.needed, join(base, 'needed0')),
    await row(`the whole root (\`"${OPT_OUT}": true\`)`, runs.whole, join(base, 'whole0')),
  ]);
  const cache = join(base, 'whole0', TOOL_CACHE);
  return { markdown, bytes: runs.whole[0].bytes, cache: existsSync(cache) ? treeBytes(cache).bytes : 0, ratio: first(runs.needed, 'total_ms') / first(runs.whole, 'total_ms') };
}

/**
 * (c) The least a 10 KB file costs here, in this process: the calls that write one into a blank
 * file (as the store does), its SHA-256, and the source's read of it; no network, no decoding.
 * Then the same writing and hashing of 1,000 files with the data in memory, on one thread and
 * on two worker threads: what the destination alone could reach, with both cores to itself.
 */
async function partC(base: string): Promise<{ markdown: string; floorMbps: number; threadsMbps: number[] }> {
  const files = 1000;
  const bytes = randomBytes(FILE_BYTES);
  const fresh = (name: string): string => {
    const dir = join(base, name);
    mkdirSync(join(dir, 'blank'), { recursive: true });
    mkdirSync(join(dir, 'blobs'));
    for (let i = 0; i < files; i++) closeSync(openSync(join(dir, 'blank', `b${i}`), 'w'));
    return dir;
  };
  const dir = fresh('floor');
  const perFile = (fn: (i: number) => void) => {
    const start = performance.now();
    for (let i = 0; i < files; i++) fn(i);
    return ((performance.now() - start) / files) * 1000;
  };
  const write = perFile((i) => writeIntoBlank(join(dir, 'blank', `b${i}`), join(dir, 'blobs', `h${i}`), bytes));
  const hash = perFile(() => createHash('sha256').update(bytes).digest('hex'));
  const read = perFile((i) => readFileSync(join(dir, 'blobs', `h${i}`)));
  const floorMbps = FILE_BYTES / MIB / ((write + hash) / 1e6);
  // Rounds alternate one and two threads, each into fresh blanks: the medians are compared.
  const times: number[][] = [[], []];
  for (let round = 0; round < THREAD_ROUNDS; round++) {
    for (const threads of [1, 2]) {
      const into = fresh(`threads${threads}-${round}`);
      times[threads - 1].push(await onThreads(into, files, threads, bytes));
      rmSync(into, { recursive: true, force: true });
    }
  }
  const threadsMbps = times.map((ms) => (files * FILE_BYTES) / MIB / (median(ms) / 1000));
  const markdown = table(['per 10 KB file', 'µs'], [
    ['write into a blank (six calls)', write.toFixed(0)], ['SHA-256', hash.toFixed(0)], ['read at the source', read.toFixed(0)],
    ['200 MB/s leaves, end to end', (FILE_BYTES / (200 * MIB) * 1e6).toFixed(0)],
  ]) + '\n\n' + table(['1,000 files written and hashed, data in memory', 'MB/s'], [
    [`one worker thread (median of ${THREAD_ROUNDS})`, threadsMbps[0].toFixed(0)],
    [`two worker threads, half the files each (median of ${THREAD_ROUNDS})`, threadsMbps[1].toFixed(0)],
  ]);
  return { markdown, floorMbps, threadsMbps };
}

function table(header: string[], rows: string[][]): string {
  return [header, header.map(() => '---'), ...rows].map((cells) => `| ${cells.join(' | ')} |`).join('\n');
}

async function main(): Promise<void> {
  const base = mkdtempSync(join(tmpdir(), 'rpcmig-bench-transfer-'));
  try {
    const a = await partA(base);
    console.log(`(a) in one process, 1,000 files of 10 KB\n${a}\n`);
    const b = await partB(base);
    console.log(`(b) two daemons on loopback\n${b.markdown}\n`);
    const c = await partC(base);
    console.log(`(c) the least a 10 KB file costs here\n${c.markdown}\n`);
    const d = await partD(base);
    console.log(`(d) a typical TypeScript app\n${d.markdown}\n`);
    const verdict = [
      `- first move of the big program: copy ${b.throughput.toFixed(0)} MB/s (goal ≥ 200; copy_ms is the prepare round trips, which carry the program's id and the manifest, and the blobs; the source's walk of its tree runs before them, beside the handshake); ${(b.throughput / c.floorMbps).toFixed(2)} × what one thread writing and hashing 10 KB files reaches here with nothing else to do, ${c.floorMbps.toFixed(0)} MB/s; two worker threads sharing that work, the data already in memory, reach ${c.threadsMbps[1].toFixed(0)} MB/s (c)`,
      `- repeated move, big / small total_ms: ${b.ratio.toFixed(2)} (goal ≤ 1.10)`,
      `- first move of the typical app, what it needs / its whole root, total_ms: ${d.ratio.toFixed(2)}`,
      b.moves,
    ].join('\n');
    console.log(verdict);
    writeSection('transfer', [
      '## Program shipping (issue 5)',
      '',
      `Machine: ${machine()}. Command: \`npm run build && node dist/bench/transfer.js\`.`,
      '',
      `(a) In one process (no network), 1,000 files of 10 KB: a first move into an empty store that creates its files (cold hash cache), a first move into an empty store with ${DEFAULT_BLANKS} blank files made beforehand, then a second move into that store.`,
      '',
      a,
      '',
      `(b) Two daemons on loopback, the counter server in a copy of fixtures/: "big" adds 800 files of 10 KB and 2 of 1 MiB under node_modules, "small" keeps rpcmig's runtime and what \`require('msgpackr')\` loads. Each daemon keeps the default ${DEFAULT_BLANKS} blank files (and a quarter as many blank directories) and has made them before the first move. First move A→B with empty stores, ${FIRST_MOVE_AFTER_MS / 1000} s after the server registered (its daemon has walked its tree by then), then ${ROUND_TRIPS} round trips B→A, A→B; "again" is the moves to B; "first back" is the first move B→A, whose program A takes from the tree it walked, where the server started. Medians over ${TRIALS} fresh pairs of daemons per program (first move) and all their moves to B (again).`,
      '',
      b.markdown,
      '',
      '(c) The least a 10 KB file costs here, in one process: the calls that write it into a blank file as the store does, its SHA-256, and the source\'s read of it; no network, no decoding; 1,000 files. Then 1,000 such files written and hashed by worker threads (bench/floor.ts), the data already in memory, the threads started before the clock: what the destination alone reaches with both cores to itself. Rounds alternate one thread and two, each into fresh blanks.',
      '',
      c.markdown,
      '',
      `(d) A typical TypeScript app: the counter server beside this repository's node_modules (its compiler, type definitions, test runner, gRPC for bench/grpc, and ts-patch's cache: ${(d.bytes / MIB).toFixed(1)} MiB in all), its package.json declaring rpcmig and msgpackr as dependencies and this repository's devDependencies as its own. A daemon ships what the server needs: the packages only devDependencies need, and the tools' caches in node_modules/.cache (here ts-patch's, ${(d.cache / MIB).toFixed(1)} MiB), stay behind (daemon/packages.ts). The same app with \`"rpcmig": { "${OPT_OUT}": true }\` ships its whole root, as every program was shipped before. First move A→B with empty stores, as in (b); medians over ${TRIALS} fresh pairs of daemons each.`,
      '',
      d.markdown,
      '',
      verdict,
      '',
      WHERE,
      '',
      BEFORE,
      '',
      WATCHED,
    ].join('\n'));
  } finally {
    rmSync(base, { recursive: true, force: true });
  }
}

void main();
