// Moving blobs between daemons (DESIGN §3 step 2): the source reads files in pieces and hands
// them to a `send` function (the coordinator's RPC call); the destination's receiver writes
// them into its blob store. Both ends keep memory bounded and overlap the fsyncs of blobs.
import { open, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { BlobStore, BlobWriter, refuseBlob } from './blobs.js';
import { isFileEntry, type Manifest } from './validate.js';

// Each unfinished blob holds a file descriptor: a peer may not open them without bound.
const MAX_OPEN_BLOBS = 16;
// Blobs verified and being fsynced at once: a disk commits concurrent fsyncs together, one
// at a time cost ~1 ms each here, which capped a 1,000-file copy at 8 MB/s.
const MAX_SEALING = 16;
// Pieces a peer may queue ahead of the writer: bounds the memory they hold.
const MAX_QUEUED_PIECES = 64;
const DEFAULT_WINDOW = 16;

/**
 * The destination end: accepts `(hash, offset, bytes, final)` pieces for the files of one
 * validated manifest, in order per blob. `bytes` must stay unchanged until the promise settles.
 */
export class BlobReceiver {
  private readonly sizes = new Map<string, number>();
  private readonly open = new Map<string, BlobWriter>();
  private readonly sealing = new Set<Promise<void>>();
  private queue: Promise<unknown> = Promise.resolve();
  private queued = 0;

  constructor(private readonly store: BlobStore, manifest: Manifest) {
    for (const entry of manifest.entries) if (isFileEntry(entry)) this.sizes.set(entry.hash, entry.size);
  }

  /** Resolves true once a final piece's blob is in the store; a refused piece discards its blob. */
  receive(hash: string, offset: number, bytes: Uint8Array, final: boolean): Promise<boolean> {
    if (this.queued >= MAX_QUEUED_PIECES) return Promise.reject(refuseBlob(hash, `more than ${MAX_QUEUED_PIECES} pieces queued`));
    this.queued++;
    const run = this.queue.then(() => this.step(hash, offset, bytes, final)).finally(() => this.queued--);
    this.queue = run.catch(() => undefined);
    // The seal is wrapped so that the queue moves on to the next piece while this blob is fsynced.
    return run.then((sealing) => (sealing === null ? false : sealing.done));
  }

  /** Discards every blob still being received (the migration was aborted). */
  async abort(): Promise<void> {
    await this.queue;
    const writers = [...this.open.values()];
    this.open.clear();
    await Promise.all([...writers.map((writer) => writer.discard()), ...this.sealing]);
  }

  private async step(hash: string, offset: number, bytes: Uint8Array, final: boolean): Promise<{ done: Promise<boolean> } | null> {
    const size = this.sizes.get(hash);
    if (size === undefined) throw refuseBlob(hash, 'not a file of the manifest');
    const writer = this.open.get(hash) ?? (await this.start(hash, offset, size));
    try {
      await writer.append(offset, bytes);
      if (!final) return null;
      if (writer.received !== size) throw refuseBlob(hash, `ended at ${writer.received} bytes, the manifest says ${size}`);
      writer.verify();
    } catch (error) {
      this.open.delete(hash);
      await writer.discard();
      throw error;
    }
    this.open.delete(hash);
    return { done: this.seal(writer) };
  }

  private async start(hash: string, offset: number, size: number): Promise<BlobWriter> {
    if (offset !== 0) throw refuseBlob(hash, `first piece at offset ${offset}`);
    if (this.open.size >= MAX_OPEN_BLOBS) throw refuseBlob(hash, `more than ${MAX_OPEN_BLOBS} blobs in progress`);
    while (this.sealing.size >= MAX_SEALING) await Promise.race(this.sealing);
    const writer = await BlobWriter.open(this.store, hash, size);
    this.open.set(hash, writer);
    return writer;
  }

  private seal(writer: BlobWriter): Promise<boolean> {
    const done = writer.seal().then(
      () => true,
      async (error: unknown) => {
        await writer.discard();
        throw error;
      },
    );
    const settled: Promise<void> = done.then(
      () => undefined,
      () => undefined,
    ).then(() => {
      this.sealing.delete(settled);
    });
    this.sealing.add(settled);
    return done;
  }
}

/** How the source hands one piece to the destination's `BlobReceiver.receive` (an RPC call). */
export type SendPiece = (hash: string, offset: number, bytes: Buffer, final: boolean) => Promise<unknown>;

export interface SendOptions {
  chunkSize?: number;
  /** Pieces sent and not yet answered: hides round trips and lets the destination batch fsyncs. */
  window?: number;
}

/**
 * The source end: sends each blob of `lacking` once, read from the program root, and returns
 * the bytes sent. A file changed since the manifest was built is refused here (wrong size) or
 * by the receiver (wrong hash).
 */
export async function sendBlobs(root: string, manifest: Manifest, lacking: readonly string[], send: SendPiece, options: SendOptions = {}): Promise<number> {
  const wanted = new Set(lacking);
  const window = new Window(options.window ?? DEFAULT_WINDOW);
  let sent = 0;
  for (const entry of manifest.entries) {
    if (!isFileEntry(entry) || !wanted.delete(entry.hash)) continue;
    let offset = 0;
    // Reading through the root follows the links that buildManifest shipped as content.
    for await (const piece of chunkFile(join(root, entry.path), options.chunkSize)) {
      await window.add(send(entry.hash, offset, piece, offset + piece.length === entry.size));
      offset += piece.length;
    }
    if (offset !== entry.size) await window.fail(refuseBlob(entry.hash, `${entry.path} changed since the manifest was built`));
    sent += offset;
  }
  await window.drain();
  return sent;
}

/**
 * Sends one file (a state file) in pieces through `send`, `window` of them unanswered at a
 * time; returns the bytes sent. The last piece is marked final.
 */
export async function sendFile(path: string, send: (offset: number, bytes: Buffer, final: boolean) => Promise<unknown>, options: SendOptions = {}): Promise<number> {
  const { size } = await stat(path);
  const window = new Window(options.window ?? DEFAULT_WINDOW);
  let offset = 0;
  for await (const piece of chunkFile(path, options.chunkSize)) {
    await window.add(send(offset, piece, offset + piece.length >= size));
    offset += piece.length;
  }
  await window.drain();
  return offset;
}

/** At most `size` promises outstanding; the first failure is thrown once all have settled. */
class Window {
  private readonly inFlight = new Set<Promise<void>>();
  private failure: { error: unknown } | undefined;

  constructor(private readonly size: number) {}

  async add(pending: Promise<unknown>): Promise<void> {
    const settled: Promise<void> = pending.then(
      () => undefined,
      (error: unknown) => {
        this.failure ??= { error };
      },
    ).then(() => {
      this.inFlight.delete(settled);
    });
    this.inFlight.add(settled);
    while (this.inFlight.size >= this.size) await Promise.race(this.inFlight);
    if (this.failure !== undefined) await this.drain();
  }

  async fail(error: unknown): Promise<never> {
    this.failure ??= { error };
    await this.drain();
    throw error;
  }

  async drain(): Promise<void> {
    await Promise.all(this.inFlight);
    if (this.failure !== undefined) throw this.failure.error;
  }
}

/**
 * A file's content in pieces of at most `chunkSize` bytes, one buffer at a time. Always yields
 * at least one piece (empty for an empty file), so the sender can mark the last one final.
 */
export async function* chunkFile(path: string, chunkSize = 1 << 20): AsyncGenerator<Buffer> {
  if (!Number.isSafeInteger(chunkSize) || chunkSize <= 0) throw new RangeError(`chunk size ${chunkSize}`);
  const file = await open(path, 'r');
  try {
    for (let offset = 0; ; ) {
      const buffer = Buffer.allocUnsafe(chunkSize);
      const { bytesRead } = await file.read(buffer, 0, chunkSize, offset);
      if (bytesRead > 0 || offset === 0) yield buffer.subarray(0, bytesRead);
      // A short read of a regular file is its end: no extra read to find out.
      if (bytesRead < chunkSize) return;
      offset += bytesRead;
    }
  } finally {
    await file.close();
  }
}
