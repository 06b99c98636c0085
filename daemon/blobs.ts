// The destination's program cache (DESIGN §3 steps 2 and 5): files stored by SHA-256 under
// `<spool>/blobs/`, each verified before it becomes visible and whole even after a crash.
// Creating a file is the cost of a first move here: on ext4 without a journal, each new inode
// is found by skipping every inode freed in the last minutes (`recently_deleted`), up to a
// millisecond of kernel time on a host that deletes many files. So the store makes no more
// inodes than the blobs themselves (one flat directory, no fan-out directories), writes them
// into blank files made while the daemon was idle (blanks.ts), and creates the rest from several
// temporary directories, since creations in one directory take turns.
import { createHash, randomBytes, type Hash } from 'node:crypto';
import { closeSync, constants, createReadStream, fchmodSync, futimesSync, lstatSync, openSync, renameSync, writeSync } from 'node:fs';
import { mkdir, open, readdir, readFile, rm, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { RpcmigError } from '../runtime/errors.js';
import { forEachLimit } from './manifest.js';
import { Blanks, DIRS_PER_BLANK } from './blanks.js';
import { DEFAULT_LIMITS, isFileEntry, type Manifest } from './validate.js';

const HASH = /^[0-9a-f]{64}$/;
// Every blob carries this mtime. Materialised programs share blob inodes through hard links, so a
// program that rewrites one of its files in place (as root, despite mode 0444) changes the
// blob; its mtime then differs and the store treats the blob as missing instead of serving it.
export const SEALED_MTIME = 0;
// Blobs checked between two yields to the event loop (~2 ms).
const STAT_SLICE = 256;
// Temporary directories, written round-robin: as many as the thread pool has threads.
const TMP_DIRS = 4;
// Blobs become visible before their data is on disk: one fsync per blob (a journal commit on
// ext4) capped a 1,000-file copy at ~25 MB/s. While any blob may be unsynced, this marker holds
// the boot id; a store opened after a reboot that left it re-hashes its blobs (see `recover`).
const MARKER = 'unsynced';
const BOOT_ID = '/proc/sys/kernel/random/boot_id';
// The unsynced blobs are fsynced this long after the last one arrived: by then the kernel has
// written them back (Linux: within 30 s) and the fsyncs are nearly free; sooner, they were a
// storm of journal commits that slowed the migrations that followed.
const CHECKPOINT_DELAY_MS = 60_000;
const SYNC_CONCURRENCY = 4;

export interface StoreOptions {
  /** Blank files to keep ready (see blanks.ts), and a quarter as many blank directories; none unless told. */
  blanks?: number;
  log?: (line: string) => void;
  /** Whether blanks may be made now: no move is under way. */
  idle?: () => boolean;
}

export function refuseBlob(hash: string, reason: string): RpcmigError {
  const shown = String(hash).slice(0, 64);
  return new RpcmigError('TRANSFER_REFUSED', `blob ${JSON.stringify(shown)} refused: ${reason}`, { hash: shown, reason });
}

export class BlobStore {
  /** Blobs installed since the last checkpoint, whose data may not be on disk yet. */
  private readonly unsynced = new Set<string>();
  /** Bumped by every install, so that a checkpoint knows whether it covered everything. */
  private installs = 0;
  private marked = false;
  /** Marker changes, one at a time: it must exist, durably, before an unsynced blob is renamed. */
  private marker: Promise<void> = Promise.resolve();
  private timer: NodeJS.Timeout | undefined;
  private temporaries = 0;
  /** Empty files in `<spool>/blobs/blank/`, written instead of creating new ones. */
  readonly blanks: Blanks;
  /** Empty directories in `<spool>/blobs/blank-dirs/`, renamed into the trees of arriving programs (materialize.ts). */
  readonly blankDirs: Blanks;

  private constructor(readonly dir: string, { blanks = 0, log = () => undefined, idle = () => true }: StoreOptions) {
    this.blanks = new Blanks(join(dir, 'blank'), blanks, log, idle);
    this.blankDirs = new Blanks(join(dir, 'blank-dirs'), Math.ceil(blanks * DIRS_PER_BLANK), log, idle, true);
  }

  /**
   * Opens `<spool>/blobs/`, discarding temporary files a crash left behind, and starts making
   * `blanks` blank files in the background (the daemon keeps DEFAULT_BLANKS; default here none).
   */
  static async open(spool: string, options: StoreOptions = {}): Promise<BlobStore> {
    const store = new BlobStore(join(spool, 'blobs'), options);
    const tmp = join(store.dir, 'tmp');
    await rm(tmp, { recursive: true, force: true });
    for (let n = 0; n < TMP_DIRS; n++) await mkdir(join(tmp, String(n)), { recursive: true });
    await store.dropFanOut();
    await store.recover();
    await store.blanks.open();
    await store.blankDirs.open();
    return store;
  }

  /** Stops making blanks. */
  close(): void {
    this.blanks.close();
    this.blankDirs.close();
  }

  /**
   * Blobs were once kept in directories named by their hashes' first two digits: a spool of
   * that layout is emptied of them (they would never be found again), not left to fill the disk.
   */
  private async dropFanOut(): Promise<void> {
    for (const entry of await readdir(this.dir, { withFileTypes: true })) {
      if (entry.isDirectory() && /^[0-9a-f]{2}$/.test(entry.name)) await rm(join(this.dir, entry.name), { recursive: true, force: true });
    }
  }

  /** Where the blob lives; the hash is checked first because it becomes part of a path. */
  path(hash: string): string {
    if (!HASH.test(hash)) throw refuseBlob(hash, 'not 64 lowercase hex digits');
    return join(this.dir, hash);
  }

  /** Whether the blob is stored, sealed and of `size`; a blob changed since is removed. */
  async has(hash: string, size?: number): Promise<boolean> {
    const path = this.path(hash);
    // Synchronous: ~8 µs here against ~20 µs through the thread pool, for every file of a program.
    const st = lstatSync(path, { throwIfNoEntry: false });
    if (st === undefined) return false;
    if (st.isFile() && st.mtimeMs === SEALED_MTIME && (size === undefined || st.size === size)) return true;
    await unlink(path).catch(() => undefined);
    return false;
  }

  /** The distinct hashes of the manifest's files that the store lacks, sorted. */
  async missing(manifest: Manifest): Promise<string[]> {
    const sizes = new Map<string, number>();
    for (const entry of manifest.entries) if (isFileEntry(entry)) sizes.set(entry.hash, entry.size);
    const lacking: string[] = [];
    let checked = 0;
    for (const [hash, size] of sizes) {
      if (!(await this.has(hash, size))) lacking.push(hash);
      if (++checked % STAT_SLICE === 0) await nextTurn();
    }
    return lacking.sort();
  }

  /** Stores bytes under their hash; refused, leaving nothing behind, if they do not hash to it. */
  async put(hash: string, data: Uint8Array | AsyncIterable<Uint8Array>, maxBytes = DEFAULT_LIMITS.maxFileBytes): Promise<void> {
    const writer = await BlobWriter.open(this, hash, maxBytes);
    try {
      const chunks = data instanceof Uint8Array ? [data] : data;
      for await (const chunk of chunks) await writer.append(writer.received, chunk);
      writer.verify();
      await writer.seal();
    } catch (error) {
      await writer.discard();
      throw error;
    }
  }

  /**
   * A file to write a blob into, opened for writing: a blank if one is left, else a new
   * temporary file. A blank is empty (the store checked it when it opened, and only the
   * daemon's user can write the spool); O_TRUNC would make ext4 write the file back when it is
   * closed (its `auto_da_alloc`). `blank`: the file is writable (0o600), not read-only yet.
   */
  openFile(hash: string): { fd: number; tmp: string; blank: boolean } {
    const flags = constants.O_WRONLY | constants.O_NOFOLLOW;
    const blank = this.blanks.take();
    if (blank !== undefined) {
      try {
        return { fd: openSync(blank, flags), tmp: blank, blank: true };
      } catch {
        // Gone from under the store: a new file does as well.
      }
    }
    const tmp = this.temporary(hash);
    return { fd: openSync(tmp, flags | constants.O_CREAT | constants.O_EXCL, 0o444), tmp, blank: false };
  }

  /** A fresh temporary name for the blob, in the next temporary directory. */
  private temporary(hash: string): string {
    return join(this.dir, 'tmp', String(this.temporaries++ % TMP_DIRS), `${hash}.${randomBytes(6).toString('hex')}`);
  }

  /** Makes a verified temporary file visible as the blob: the rename is the commit point. */
  async install(tmp: string, hash: string): Promise<void> {
    this.unsynced.add(hash);
    this.installs++;
    if (!this.marked) await this.mark();
    // No fsync of the directory: a blob lost to a crash is only a cache miss, asked for again.
    renameSync(tmp, this.path(hash));
    this.schedule();
  }

  /**
   * Puts the data of every blob installed so far on disk, then removes the marker unless more
   * blobs arrived meanwhile. Runs by itself after each burst of installs; a failure leaves the
   * marker, which only costs a re-hash after the next reboot.
   */
  async checkpoint(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    const seen = this.installs;
    const hashes = [...this.unsynced];
    await forEachLimit(hashes, SYNC_CONCURRENCY, (hash) => syncFile(this.path(hash)));
    await this.changeMarker(async () => {
      for (const hash of hashes) this.unsynced.delete(hash);
      if (this.installs !== seen || !this.marked) return;
      this.marked = false;
      await unlink(join(this.dir, MARKER)).catch(() => undefined);
    });
  }

  /** Writes the marker, durably (file and directory), before the first unsynced rename. */
  private mark(): Promise<void> {
    return this.changeMarker(async () => {
      if (this.marked) return;
      const file = await open(join(this.dir, MARKER), 'w', 0o600);
      try {
        await file.writeFile(await bootId());
        await file.sync();
      } finally {
        await file.close();
      }
      await syncFile(this.dir);
      this.marked = true;
    });
  }

  private changeMarker(change: () => Promise<void>): Promise<void> {
    const changed = this.marker.then(change);
    this.marker = changed.catch(() => undefined);
    return changed;
  }

  /** (Re)starts the checkpoint's clock; refreshing one timer costs less than a new one per blob. */
  private schedule(): void {
    if (this.timer !== undefined) return void this.timer.refresh();
    this.timer = setTimeout(() => void this.checkpoint().catch(() => undefined), CHECKPOINT_DELAY_MS);
    this.timer.unref();
  }

  /**
   * A marker left by an earlier daemon: after a daemon restart the data is still in the page
   * cache, so its blobs only await a checkpoint; after a reboot (another boot id, or none known)
   * any blob may be torn, so each is hashed again and the torn ones are dropped.
   */
  private async recover(): Promise<void> {
    const left = await readFile(join(this.dir, MARKER), 'utf8').catch(() => null);
    if (left === null) return;
    const blobs = await this.list();
    const boot = await bootId();
    if (boot !== '' && left === boot) {
      this.marked = true;
      for (const hash of blobs) this.unsynced.add(hash);
      this.schedule();
      return;
    }
    await forEachLimit(blobs, SYNC_CONCURRENCY, async (hash) => {
      if ((await hashOf(this.path(hash))) !== hash) await unlink(this.path(hash));
    });
    await unlink(join(this.dir, MARKER));
  }

  private async list(): Promise<string[]> {
    return (await readdir(this.dir)).filter((name) => HASH.test(name));
  }
}

/** This boot's id ('' where the system has none): tells a daemon restart from a reboot. */
async function bootId(): Promise<string> {
  return (await readFile(BOOT_ID, 'utf8').catch(() => '')).trim();
}

async function hashOf(path: string): Promise<string> {
  const hasher = createHash('sha256');
  for await (const chunk of createReadStream(path)) hasher.update(chunk as Buffer);
  return hasher.digest('hex');
}

/** fsync of a file or directory; one removed meanwhile (the store dropped it) needs none. */
async function syncFile(path: string): Promise<void> {
  const file = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return null;
    throw error;
  });
  if (file === null) return;
  try {
    await file.sync();
  } finally {
    await file.close();
  }
}

/**
 * One blob being written: a temporary file, fed in order, hashed as it goes. The calls are
 * synchronous: ~0.1 ms for a 10 KB file here, against ~0.3 ms for the six round trips through
 * the thread pool that the same calls take as promises; callers yield between blobs.
 */
export class BlobWriter {
  received = 0;
  private readonly hasher: Hash = createHash('sha256');
  private readonly fd: number;
  private readonly tmp: string;
  private readonly blank: boolean;

  private constructor(private readonly store: BlobStore, readonly hash: string, private readonly maxBytes: number) {
    store.path(hash);
    ({ fd: this.fd, tmp: this.tmp, blank: this.blank } = store.openFile(hash));
  }

  static async open(store: BlobStore, hash: string, maxBytes: number): Promise<BlobWriter> {
    return new BlobWriter(store, hash, maxBytes);
  }

  async append(offset: number, bytes: Uint8Array): Promise<void> {
    if (offset !== this.received) throw refuseBlob(this.hash, `piece at offset ${offset}, expected ${this.received}`);
    if (this.received + bytes.length > this.maxBytes) throw refuseBlob(this.hash, `longer than ${this.maxBytes} bytes`);
    this.received += bytes.length;
    this.hasher.update(bytes);
    for (let at = 0; at < bytes.length; ) at += writeSync(this.fd, bytes, at, bytes.length - at, offset + at);
  }

  /** Refuses content that does not hash to the name it was sent under. */
  verify(): void {
    const actual = this.hasher.digest('hex');
    if (actual !== this.hash) throw refuseBlob(this.hash, `content hashes to ${actual}`);
  }

  /** Seals the mode and mtime and installs the blob; its data reaches the disk at the store's checkpoint. */
  async seal(): Promise<void> {
    if (this.blank) fchmodSync(this.fd, 0o444);
    futimesSync(this.fd, SEALED_MTIME, SEALED_MTIME);
    closeSync(this.fd);
    await this.store.install(this.tmp, this.hash);
  }

  async discard(): Promise<void> {
    try {
      closeSync(this.fd);
    } catch {
      // closed by seal already
    }
    await rm(this.tmp, { force: true });
  }
}
