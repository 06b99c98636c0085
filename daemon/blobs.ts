// The destination's program cache (DESIGN §3 steps 2 and 5): files stored by SHA-256 under
// `<spool>/blobs/`, each verified before it becomes visible.
import { createHash, randomBytes, type Hash } from 'node:crypto';
import { constants } from 'node:fs';
import { lstat, mkdir, open, rename, rm, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { RpcmigError } from '../runtime/errors.js';
import { forEachLimit } from './manifest.js';
import { DEFAULT_LIMITS, isFileEntry, type Manifest } from './validate.js';

const HASH = /^[0-9a-f]{64}$/;
// Every blob carries this mtime. Materialised programs share blob inodes through hard links, so a
// program that rewrites one of its files in place (as root, despite mode 0444) changes the
// blob; its mtime then differs and the store treats the blob as missing instead of serving it.
const SEALED_MTIME = 0;
const STAT_CONCURRENCY = 32;

export function refuseBlob(hash: string, reason: string): RpcmigError {
  const shown = String(hash).slice(0, 64);
  return new RpcmigError('TRANSFER_REFUSED', `blob ${JSON.stringify(shown)} refused: ${reason}`, { hash: shown, reason });
}

export class BlobStore {
  private readonly fanout = new Set<string>();

  private constructor(readonly dir: string) {}

  /** Opens `<spool>/blobs/`, discarding temporary files a crash left behind. */
  static async open(spool: string): Promise<BlobStore> {
    const store = new BlobStore(join(spool, 'blobs'));
    await rm(store.tmpDir(), { recursive: true, force: true });
    await mkdir(store.tmpDir(), { recursive: true });
    return store;
  }

  /** Where the blob lives; the hash is checked first because it becomes part of a path. */
  path(hash: string): string {
    if (!HASH.test(hash)) throw refuseBlob(hash, 'not 64 lowercase hex digits');
    return join(this.dir, hash.slice(0, 2), hash);
  }

  async has(hash: string, size?: number): Promise<boolean> {
    const path = this.path(hash);
    const st = await lstat(path).catch(() => null);
    if (st === null) return false;
    if (st.isFile() && st.mtimeMs === SEALED_MTIME && (size === undefined || st.size === size)) return true;
    await unlink(path).catch(() => undefined);
    return false;
  }

  /** The distinct hashes of the manifest's files that the store lacks, sorted. */
  async missing(manifest: Manifest): Promise<string[]> {
    const sizes = new Map<string, number>();
    for (const entry of manifest.entries) if (isFileEntry(entry)) sizes.set(entry.hash, entry.size);
    const lacking: string[] = [];
    await forEachLimit([...sizes], STAT_CONCURRENCY, async ([hash, size]) => {
      if (!(await this.has(hash, size))) lacking.push(hash);
    });
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

  tmpDir(): string {
    return join(this.dir, 'tmp');
  }

  /** Makes a verified temporary file visible as the blob: the rename is the commit point. */
  async install(tmp: string, hash: string): Promise<void> {
    const fanout = join(this.dir, hash.slice(0, 2));
    if (!this.fanout.has(fanout)) {
      await mkdir(fanout, { recursive: true });
      this.fanout.add(fanout);
    }
    // No fsync of the directory: a blob lost to a crash is only a cache miss, asked for again.
    await rename(tmp, this.path(hash));
  }
}

/** One blob being written: a temporary file, fed in order, hashed as it goes. */
export class BlobWriter {
  received = 0;
  private readonly hasher: Hash = createHash('sha256');

  private constructor(
    private readonly store: BlobStore,
    readonly hash: string,
    private readonly maxBytes: number,
    private readonly file: FileHandle,
    private readonly tmp: string,
  ) {}

  static async open(store: BlobStore, hash: string, maxBytes: number): Promise<BlobWriter> {
    store.path(hash);
    const tmp = join(store.tmpDir(), `${hash}.${randomBytes(6).toString('hex')}`);
    const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
    return new BlobWriter(store, hash, maxBytes, await open(tmp, flags, 0o444), tmp);
  }

  async append(offset: number, bytes: Uint8Array): Promise<void> {
    if (offset !== this.received) throw refuseBlob(this.hash, `piece at offset ${offset}, expected ${this.received}`);
    if (this.received + bytes.length > this.maxBytes) throw refuseBlob(this.hash, `longer than ${this.maxBytes} bytes`);
    this.received += bytes.length;
    this.hasher.update(bytes);
    await this.file.write(bytes, 0, bytes.length, offset);
  }

  /** Refuses content that does not hash to the name it was sent under. */
  verify(): void {
    const actual = this.hasher.digest('hex');
    if (actual !== this.hash) throw refuseBlob(this.hash, `content hashes to ${actual}`);
  }

  /** fsync before rename, so that a visible blob is always whole, even after a crash. */
  async seal(): Promise<void> {
    await this.file.utimes(SEALED_MTIME, SEALED_MTIME);
    await this.file.sync();
    await this.file.close();
    await this.store.install(this.tmp, this.hash);
  }

  async discard(): Promise<void> {
    await this.file.close().catch(() => undefined);
    await rm(this.tmp, { force: true });
  }
}
