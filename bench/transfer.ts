// Program shipping figures (issue 5): manifest, copy and materialisation of a 10 MB tree of
// 1,000 files, first move (cold hash cache, empty store) and second move. Prints a table.
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { BlobReceiver, BlobStore, buildManifest, manifestId, materialize, sendBlobs } from '../daemon/transfer.js';

const PACKAGES = 50;
const FILES_PER_PACKAGE = 20;
const FILE_BYTES = 10_000;

function makeTree(root: string): void {
  // Old modification times: a tree just written is not cached (the racy-hash guard).
  const old = new Date(Date.now() - 60_000);
  mkdirSync(root);
  writeFileSync(join(root, 'package.json'), '{"name":"bench"}');
  for (let p = 0; p < PACKAGES; p++) {
    const dir = join(root, 'node_modules', `pkg${p}`, 'lib');
    mkdirSync(dir, { recursive: true });
    for (let f = 0; f < FILES_PER_PACKAGE; f++) {
      writeFileSync(join(dir, `f${f}.js`), randomBytes(FILE_BYTES));
      utimesSync(join(dir, `f${f}.js`), old, old);
    }
  }
}

async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const start = performance.now();
  const result = await fn();
  return [result, performance.now() - start];
}

async function move(root: string, store: BlobStore, programs: string, label: string): Promise<void> {
  const [manifest, manifestMs] = await timed(() => buildManifest(root, { exclude: [] }));
  const receiver = new BlobReceiver(store, manifest);
  const [sent, copyMs] = await timed(async () =>
    sendBlobs(root, manifest, await store.missing(manifest), (...piece) => receiver.receive(...piece)),
  );
  const dest = join(programs, `${manifestId(manifest).slice(0, 12)}-${label}`);
  const [, materializeMs] = await timed(() => materialize(manifest, store, dest));
  const mbps = sent === 0 ? '-' : ((sent / 2 ** 20) / (copyMs / 1000)).toFixed(0);
  const row = [label, manifest.entries.length, manifestMs.toFixed(1), copyMs.toFixed(1), sent, mbps, materializeMs.toFixed(1)];
  console.log(`| ${row.join(' | ')} |`);
}

async function main(): Promise<void> {
  const base = mkdtempSync(join(tmpdir(), 'rpcmig-bench-transfer-'));
  try {
    makeTree(join(base, 'app'));
    const store = await BlobStore.open(join(base, 'spool'));
    mkdirSync(join(base, 'spool', 'programs'));
    console.log('| move | entries | manifest ms | copy ms | bytes sent | copy MB/s | materialise ms |');
    console.log('| --- | --- | --- | --- | --- | --- | --- |');
    await move(join(base, 'app'), store, join(base, 'spool', 'programs'), 'first');
    await move(join(base, 'app'), store, join(base, 'spool', 'programs'), 'second');
  } finally {
    rmSync(base, { recursive: true, force: true });
  }
}

void main();
