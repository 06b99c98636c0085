// The least a first move's blob costs at the destination, with nothing else to do: its SHA-256
// and the calls that write it into a blank file as the store does (blobs.ts). Run in the bench's
// thread, or as a worker thread that writes the files [from, to) of a directory of blanks.
import { createHash } from 'node:crypto';
import { closeSync, constants, fchmodSync, futimesSync, openSync, renameSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { once } from 'node:events';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';

/** Open, write, fchmod, futimes, close, rename: what BlobWriter does for a blob that arrives whole. */
export function writeIntoBlank(blank: string, blob: string, bytes: Uint8Array): void {
  const fd = openSync(blank, constants.O_WRONLY);
  writeSync(fd, bytes);
  fchmodSync(fd, 0o444);
  futimesSync(fd, 1, 1);
  closeSync(fd);
  renameSync(blank, blob);
}

/** The blanks `<dir>/blank/b<i>` hashed and written to `<dir>/blobs/h<i>`, for i in [from, to). */
export function writeFiles(dir: string, from: number, to: number, bytes: Uint8Array): void {
  for (let i = from; i < to; i++) {
    createHash('sha256').update(bytes).digest('hex');
    writeIntoBlank(join(dir, 'blank', `b${i}`), join(dir, 'blobs', `h${i}`), bytes);
  }
}

interface Share {
  dir: string;
  from: number;
  to: number;
  bytes: Uint8Array;
}

/**
 * Milliseconds for `threads` worker threads to write `files` blanks of `dir`, an equal share
 * each; the threads are started and ready before the clock starts, as a pool would be.
 */
export async function onThreads(dir: string, files: number, threads: number, bytes: Uint8Array): Promise<number> {
  const workers = Array.from({ length: threads }, (_, n) => {
    const share: Share = { dir, from: Math.floor((files * n) / threads), to: Math.floor((files * (n + 1)) / threads), bytes };
    return new Worker(__filename, { workerData: share });
  });
  try {
    const replies = () => Promise.all(workers.map((worker) => once(worker, 'message')));
    await replies();
    const start = performance.now();
    const done = replies();
    for (const worker of workers) worker.postMessage('go');
    await done;
    return performance.now() - start;
  } finally {
    await Promise.all(workers.map((worker) => worker.terminate()));
  }
}

if (!isMainThread && parentPort !== null) {
  const port = parentPort;
  const { dir, from, to, bytes } = workerData as Share;
  port.once('message', () => {
    writeFiles(dir, from, to, bytes);
    port.postMessage('done');
  });
  port.postMessage('ready');
}
