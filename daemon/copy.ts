// Moving blobs between daemons (DESIGN §3 step 2): the source reads files in pieces and hands
// them to a `send` function (the coordinator's RPC call), many small files to a call; the
// destination's receiver writes them into its blob store. Both ends keep memory bounded.
import { closeSync, constants, openSync, readSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { BlobStore, BlobWriter, refuseBlob } from './blobs.js';
import { sourcePath, type Placed } from './packages.js';
import { isFileEntry, type Manifest } from './validate.js';

// Each unfinished blob holds a file descriptor: a peer may not open them without bound.
const MAX_OPEN_BLOBS = 16;
// Bytes a peer may queue ahead of the writers: bounds the memory its pieces hold.
const MAX_QUEUED_BYTES = 64 * 2 ** 20;
const MAX_BATCH_PIECES = 4096;
// A batch closes once it holds this much: one call carries ~100 files of 10 KB, since a call
// per small file cost a round of queueing at both ends.
const BATCH_BYTES = 2 ** 20;
const BLOB_WINDOW = 8;
// Files this large or larger are read, and sent, in pieces of this size.
const CHUNK_BYTES = 2 ** 20;
// Blobs copied from this host's own files between two yields to the event loop (~3 ms).
const HERE_SLICE = 32;

/** One piece of a blob on the wire: `bytes` of the blob `hash` at `offset`; `final` ends the blob. */
export type Piece = [hash: string, offset: number, bytes: Uint8Array, final: boolean];

/** A blob being received: pieces are checked on arrival and written in order, one after another. */
interface Incoming {
  writer: Promise<BlobWriter>;
  next: number;
  tail: Promise<unknown>;
}

/**
 * The destination end: accepts batches of pieces for the files of one validated manifest, in
 * order per blob. The pieces' bytes must stay unchanged until the promise settles.
 */
export class BlobReceiver {
  private readonly sizes = new Map<string, number>();
  private readonly open = new Map<string, Incoming>();
  private readonly pending = new Set<Promise<unknown>>();
  private queued = 0;

  constructor(private readonly store: BlobStore, manifest: Manifest) {
    for (const entry of manifest.entries) if (isFileEntry(entry)) this.sizes.set(entry.hash, entry.size);
  }

  /**
   * Resolves with the number of blobs the batch completed, once they are in the store; rejects
   * with the first refusal, once every piece settled. A refused piece discards its blob.
   */
  async receive(pieces: readonly Piece[]): Promise<number> {
    const bytes = pieces.reduce((sum, piece) => sum + piece[2].length, 0);
    if (pieces.length === 0 || pieces.length > MAX_BATCH_PIECES) throw refuseBlob('', `a batch of ${pieces.length} pieces`);
    if (this.queued + bytes > MAX_QUEUED_BYTES) throw refuseBlob(pieces[0][0], `more than ${MAX_QUEUED_BYTES} bytes queued`);
    this.queued += bytes;
    const results = await Promise.allSettled(pieces.map((piece) => this.track(this.piece(...piece)).finally(() => (this.queued -= piece[2].length))));
    const refused = results.find((result) => result.status === 'rejected');
    if (refused !== undefined) throw refused.reason;
    return results.filter((result) => result.status === 'fulfilled' && result.value).length;
  }

  /** Discards every blob still being received (the migration was aborted). */
  async abort(): Promise<void> {
    const incoming = [...this.open.values()];
    this.open.clear();
    await Promise.allSettled([...this.pending]);
    await Promise.all(incoming.map(async (blob) => (await blob.writer.catch(() => null))?.discard()));
  }

  /** Checks a piece at once (in arrival order), then queues its write behind its blob's earlier pieces. */
  private piece(hash: string, offset: number, bytes: Uint8Array, final: boolean): Promise<boolean> {
    const size = this.sizes.get(hash);
    if (size === undefined) return Promise.reject(refuseBlob(hash, 'not a file of the manifest'));
    if (offset === 0 && final && !this.open.has(hash)) return this.whole(hash, size, bytes);
    const blob = this.open.get(hash) ?? this.start(hash, offset, size);
    if (blob === undefined) return Promise.reject(refuseBlob(hash, offset !== 0 ? `first piece at offset ${offset}` : `more than ${MAX_OPEN_BLOBS} blobs in progress`));
    const reason = misfit(blob.next, offset, bytes.length, final, size);
    blob.next = offset + bytes.length;
    if (final || reason !== undefined) this.open.delete(hash);
    const written = blob.tail.then(async () => {
      const writer = await blob.writer;
      try {
        if (reason !== undefined) throw refuseBlob(hash, reason);
        await writer.append(offset, bytes);
        if (final) {
          writer.verify();
          await writer.seal();
        }
      } catch (error) {
        await writer.discard();
        throw error;
      }
      return final;
    });
    blob.tail = written;
    return written;
  }

  private start(hash: string, offset: number, size: number): Incoming | undefined {
    if (offset !== 0 || this.open.size >= MAX_OPEN_BLOBS) return undefined;
    const writer = BlobWriter.open(this.store, hash, size);
    const blob: Incoming = { writer, next: 0, tail: writer };
    this.open.set(hash, blob);
    // A blob that could not be opened is forgotten; its pieces are refused with the reason.
    writer.catch(() => this.open.get(hash) === blob && this.open.delete(hash));
    return blob;
  }

  /**
   * A blob in one piece (most files of a program): written whole with synchronous calls, one
   * blob per turn of the event loop, so that the daemon answers others between two blobs.
   */
  private async whole(hash: string, size: number, bytes: Uint8Array): Promise<boolean> {
    const reason = misfit(0, 0, bytes.length, true, size);
    if (reason !== undefined) throw refuseBlob(hash, reason);
    await nextTurn();
    await this.store.put(hash, bytes, size);
    return true;
  }

  private track<T>(promise: Promise<T>): Promise<T> {
    this.pending.add(promise);
    return promise.finally(() => this.pending.delete(promise));
  }
}

/** Why a piece does not continue its blob (expected at `next`, of `size` bytes), if it does not. */
function misfit(next: number, offset: number, length: number, final: boolean, size: number): string | undefined {
  if (offset !== next) return `piece at offset ${offset}, expected ${next}`;
  if (offset + length > size) return `longer than ${size} bytes`;
  if (final && offset + length !== size) return `ended at ${offset + length} bytes, the manifest says ${size}`;
  return undefined;
}

/**
 * The blobs of `lacking` that this host has itself, in files of program trees its daemon
 * walked (`here`: hash → path), read into the store, each checked against its hash as a
 * received blob is; returns the hashes still lacking, which the source sends. A server that
 * moved away and comes back thus brings no program bytes. A file changed since its walk, or
 * gone, is simply still lacking.
 */
export async function copyHere(store: BlobStore, manifest: Manifest, lacking: readonly string[], here: ReadonlyMap<string, string>): Promise<string[]> {
  if (here.size === 0) return [...lacking];
  const sizes = new Map(manifest.entries.filter(isFileEntry).map((entry) => [entry.hash, entry.size]));
  const still: string[] = [];
  let copied = 0;
  for (const hash of lacking) {
    const path = here.get(hash);
    const size = sizes.get(hash);
    const stored = path !== undefined && size !== undefined && (await store.put(hash, readPieces(path, size, CHUNK_BYTES), size).then(() => true, () => false));
    if (!stored) still.push(hash);
    // The calls are synchronous, ~0.1 ms a small file: the daemon answers others between slices.
    else if (++copied % HERE_SLICE === 0) await nextTurn();
  }
  return still;
}

/** How the source hands a batch of pieces to the destination's `BlobReceiver.receive` (an RPC call). */
export type SendBatch = (pieces: Piece[]) => Promise<unknown>;

export interface SendOptions {
  chunkSize?: number;
  /** Calls sent and not yet answered: hides round trips and keeps the destination's writers busy. */
  window?: number;
  /** Packages shipped from outside the root, read where they are (ManifestOptions.above). */
  placed?: Placed;
}

/**
 * The source end: sends each blob of `lacking` once, read from the program root, in batches of
 * about BATCH_BYTES, and returns the bytes sent. A file changed since the manifest was built is
 * refused here (wrong size) or by the receiver (wrong hash).
 */
export async function sendBlobs(root: string, manifest: Manifest, lacking: readonly string[], send: SendBatch, options: SendOptions = {}): Promise<number> {
  const wanted = new Set(lacking);
  const window = new Window(options.window ?? BLOB_WINDOW);
  const chunkSize = options.chunkSize ?? CHUNK_BYTES;
  const placed = options.placed ?? new Map<string, string>();
  let batch: Piece[] = [];
  let batched = 0;
  let sent = 0;
  const flush = async (): Promise<void> => {
    if (batch.length === 0) return;
    await window.add(send(batch));
    [batch, batched] = [[], 0];
    // Lets the call leave (and its reply arrive) before the next files are read.
    await nextTurn();
  };
  for (const entry of manifest.entries) {
    if (!isFileEntry(entry) || !wanted.delete(entry.hash)) continue;
    let offset = 0;
    // Reading through the root follows the links that buildManifest shipped as content.
    for await (const piece of readPieces(sourcePath(root, placed, entry.path), entry.size, chunkSize)) {
      batch.push([entry.hash, offset, piece, offset + piece.length === entry.size]);
      batched += piece.length;
      offset += piece.length;
      if (batched >= BATCH_BYTES || batch.length >= MAX_BATCH_PIECES) await flush();
    }
    if (offset !== entry.size) await window.fail(refuseBlob(entry.hash, `${entry.path} changed since the manifest was built`));
    sent += offset;
  }
  await flush();
  await window.drain();
  return sent;
}

/**
 * A file's content: read at once when the manifest says it fits one piece (a synchronous read
 * costs ~15 µs here, a promise read ~75 µs), else in pieces. One byte more than the manifest
 * says is asked for, so that a file grown since is seen without reading all of it.
 */
async function* readPieces(path: string, size: number, chunkSize: number): AsyncGenerator<Buffer> {
  if (size >= chunkSize) return yield* chunkFile(path, chunkSize);
  // O_NONBLOCK: a FIFO put in the file's place must not block the daemon's only thread.
  const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const buffer = Buffer.allocUnsafe(size + 1);
    yield buffer.subarray(0, readSync(fd, buffer, 0, size + 1, 0));
  } finally {
    closeSync(fd);
  }
}

/** At most `size` promises outstanding; the first failure is thrown once all have settled. */
export class Window {
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
export async function* chunkFile(path: string, chunkSize = CHUNK_BYTES): AsyncGenerator<Buffer> {
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
