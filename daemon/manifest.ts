// The source side of program shipping (DESIGN §3 step 2): the manifest of content hashes of a
// server's package root, which the destination compares with its blob cache.
import { createHash, type Hash } from 'node:crypto';
import { closeSync, constants, createReadStream, lstatSync, openSync, readdirSync, readFileSync, readlinkSync, statSync, type Stats } from 'node:fs';
import { realpath, stat } from 'node:fs/promises';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { dirname, join, relative, resolve } from 'node:path';
import { RpcmigError } from '../runtime/errors.js';
import { fromAbove, leftBehind, type Placed } from './packages.js';
import { isBelowAny, isInside, realOrUndefined } from './paths.js';
import { DEFAULT_LIMITS, isFileEntry, refuse, validateManifest, type Entry, type FileMode, type Limits, type Manifest } from './validate.js';

export interface ManifestOptions {
  /** Absolute paths left out, with everything below them (the daemon's spool). */
  exclude: string[];
  limits?: Partial<Limits>;
  /** Told how long listing and stat'ing the tree took, hashing left out: what a walk costs once the hashes are cached. */
  walked?: (ms: number) => void;
  /**
   * The tree was built here from verified blobs of this manifest, each sealed with `mtime`: a
   * file found as it was sealed (that mtime, the manifest's size) has the manifest's hash.
   */
  built?: { manifest: Manifest; mtime: number };
  /**
   * Called with each directory before it is listed, with each package's directory before its
   * package.json is read (packages.ts), and with the directory of each file reached through a
   * link that leaves the tree: every place whose change changes the manifest. Once or more each.
   */
  watch?: (dir: string) => void;
  /** Told the paths, relative to the root, of the directories found and left behind (packages.ts), in the order walked. */
  behind?: (paths: string[]) => void;
  /** Told the packages shipped from outside the root (packages.ts, `fromAbove`): the source reads their files there (`sourcePath`). */
  above?: (placed: Placed) => void;
}

/** Hashing work done by this process, so that callers and tests can see the cache at work. */
export const hashStats = { hashed: 0, cached: 0, bytesHashed: 0 };

interface CachedHash {
  size: number;
  mtimeMs: number;
  ctimeMs: number;
  ino: number;
  hash: string;
}
// Keyed by absolute path; a re-run over an unchanged tree only stats it.
const hashCache = new Map<string, CachedHash>();
// The last file seen with each hash, cached or not (see `filesOf`), and each such file's hash:
// a file that changes drops its old hash, so that both stay as large as the trees walked.
const seenAt = new Map<string, string>();
const seenHash = new Map<string, string>();

function see(hash: string, abs: string): void {
  const before = seenHash.get(abs);
  if (before !== undefined && before !== hash && seenAt.get(before) === abs) seenAt.delete(before);
  seenHash.set(abs, hash);
  seenAt.set(hash, abs);
}

// The manifest last built per root, with the listing it was built from (files with their
// cached hashes, links, limits): a tree listed again unchanged gets the same manifest back,
// without sorting and checking it again. Callers do not change manifests.
const lastBuilt = new Map<string, { rows: string; manifest: Manifest }>();
const ids = new WeakMap<Manifest, string>();
// A file modified within this long of being hashed could change again within the same
// timestamp tick without its stat changing (git's "racily clean" case): it is not cached.
const RACY_MS = 2000;
const SMALL_FILE = 1 << 20;
const HASH_CONCURRENCY = 16;
// The walk uses synchronous stat calls, ~15 µs each here against ~60 µs through the thread
// pool, so that an unchanged tree is re-listed in milliseconds; it yields to the event loop
// every this many entries (about a millisecond), so that the daemon stays responsive on trees
// of 100,000 files and while a walk runs on beside a move whose server is paused.
const WALK_SLICE = 32;
// Small files hashed between two yields: ~1 ms of work; each file counts as 4 KB more for its open.
const SLICE_BYTES = 2 ** 20;
const SLICE_OVERHEAD = 4096;

interface Found {
  path: string;
  abs: string;
  st: Stats;
}
interface Walk {
  root: string;
  watch?: (dir: string) => void;
  exclude: Set<string>;
  /** What stays behind (packages.ts): the packages only devDependencies need, tools' caches; and the links into them. */
  behind: Set<string>;
  /** The paths of those found while walking. */
  behindPaths: string[];
  limits: Limits;
  files: Found[];
  links: Entry[];
  bytes: number;
  visited: number;
}

/** The nearest directory at or above the entry's (real) directory that holds a package.json. */
export async function findPackageRoot(entry: string): Promise<string> {
  const start = dirname(await realpath(entry));
  for (let dir = start; ; dir = dirname(dir)) {
    const found = await stat(join(dir, 'package.json')).then((st) => st.isFile(), () => false);
    if (found) return dir;
    if (dirname(dir) === dir) throw new RpcmigError('TRANSFER_REFUSED', `no package.json at or above ${start}`, { path: entry });
  }
}

/**
 * Walks the package root (node_modules included, but for the packages that only its
 * devDependencies need and the tools' caches; `.git` directories and `exclude` left out), and
 * the packages it needs from outside it (a workspace's hoisted node_modules), and hashes every
 * file. Links resolving inside the root are kept as relative links; links leaving it are
 * shipped as the content they point to (see `walkLink`).
 */
export async function buildManifest(root: string, options: ManifestOptions): Promise<Manifest> {
  const limits = { ...DEFAULT_LIMITS, ...options.limits };
  const realRoot = await realpath(root);
  const exclude = new Set<string>();
  for (const path of options.exclude) {
    exclude.add(resolve(path));
    exclude.add(await realpath(path).catch(() => resolve(path)));
  }
  const behind = new Set(leftBehind(realRoot, options.watch));
  const placed = fromAbove(realRoot, behind, options.watch);
  const walk: Walk = { root: realRoot, watch: options.watch, exclude, behind, behindPaths: [], limits, files: [], links: [], bytes: 0, visited: 0 };
  const began = performance.now();
  await walkDir(walk, realRoot, '', []);
  await walkPlaced(walk, placed);
  options.above?.(placed);
  options.walked?.(performance.now() - began);
  options.behind?.(walk.behindPaths);
  const files: Entry[] = [];
  const sealed = options.built && sealedHashes(options.built.manifest, options.built.mtime);
  const toHash = walk.files.filter((found) => {
    const hash = cachedHash(found.abs, found.st) ?? sealed?.(found);
    if (hash !== undefined) files.push({ path: found.path, size: found.st.size, mode: modeOf(found.st), hash });
    return hash === undefined;
  });
  // Every hash known: the tree as listed, which is the manifest's content, decides whether it is the last one.
  const rows = toHash.length === 0 ? JSON.stringify([files, walk.links, limits]) : undefined;
  const last = lastBuilt.get(realRoot);
  if (rows !== undefined && last?.rows === rows) return last.manifest;
  files.push(...(await hashFiles(toHash)));
  const entries = [...files, ...walk.links].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  // The source refuses what the destination would refuse, with the same message, before sending.
  const manifest = validateManifest({ entries }, limits);
  if (rows !== undefined) lastBuilt.set(realRoot, { rows, manifest });
  return manifest;
}

/**
 * Small files are read synchronously (~15 µs each here, ~75 µs through the thread pool),
 * yielding to the event loop between slices; large ones are streamed, a few at a time.
 */
async function hashFiles(found: readonly Found[]): Promise<Entry[]> {
  const files: Entry[] = [];
  let slice = 0;
  for (const { path, abs, st } of found) {
    if (st.size > SMALL_FILE) continue;
    files.push({ path, mode: modeOf(st), ...hashSmall(abs, st) });
    slice += st.size + SLICE_OVERHEAD;
    if (slice > SLICE_BYTES) {
      slice = 0;
      await nextTurn();
    }
  }
  await forEachLimit(found.filter(({ st }) => st.size > SMALL_FILE), HASH_CONCURRENCY, async ({ path, abs, st }) => {
    const hasher = createHash('sha256');
    const started = Date.now();
    const size = await hashStream(hasher, abs);
    files.push({ path, size, mode: modeOf(st), hash: remember(abs, st, started, hasher, size) });
  });
  return files;
}

/**
 * Files this process hashed, by the hashes wanted: for each hash, the last file seen with it,
 * its hash cached or not (RACY_MS). A file may have changed since: whoever reads it checks its
 * hash again.
 */
export function filesOf(hashes: Iterable<string>): Map<string, string> {
  const found = new Map<string, string>();
  for (const hash of hashes) {
    const abs = seenAt.get(hash);
    if (abs !== undefined) found.set(hash, abs);
  }
  return found;
}

/** SHA-256 of the manifest's canonical encoding: equal programs have equal ids. */
export function manifestId(manifest: Manifest): string {
  const known = ids.get(manifest);
  if (known !== undefined) return known;
  const rows = manifest.entries.map((e) => ('hash' in e ? [e.path, e.size, e.mode, e.hash] : [e.path, e.link]));
  const id = createHash('sha256').update(JSON.stringify(['rpcmig-manifest-1', rows])).digest('hex');
  ids.set(manifest, id);
  return id;
}

async function walkDir(walk: Walk, absDir: string, relDir: string, followed: readonly string[]): Promise<void> {
  walk.watch?.(absDir);
  for (const name of readdirSync(absDir)) {
    const abs = join(absDir, name);
    if (name === '.git' || walk.exclude.has(abs)) continue;
    const path = relDir === '' ? name : `${relDir}/${name}`;
    if (walk.behind.has(abs)) {
      walk.behindPaths.push(path);
      continue;
    }
    if (++walk.visited % WALK_SLICE === 0) await nextTurn();
    const st = lstatSync(abs);
    if (st.isSymbolicLink()) await walkLink(walk, abs, path, followed);
    else await walkNode(walk, abs, path, st, followed);
  }
}

async function walkNode(walk: Walk, abs: string, path: string, st: Stats, followed: readonly string[]): Promise<void> {
  if (st.isDirectory()) return walkDir(walk, abs, path, followed);
  // Sockets, FIFOs and devices are run-time artefacts of the server, not program content.
  if (!st.isFile()) return;
  walk.bytes += st.size;
  walk.files.push({ path, abs, st });
  // Checked while walking so that a link to a huge tree fails before anything is hashed.
  if (walk.files.length + walk.links.length > walk.limits.maxEntries) {
    throw refuse(path, `program has more than ${walk.limits.maxEntries} entries`);
  }
  if (walk.bytes > walk.limits.maxTotalBytes) throw refuse(path, `program exceeds ${walk.limits.maxTotalBytes} bytes in total`);
}

/**
 * A link whose real target is inside the root stays a link, rewritten relative to its place
 * (an absolute target would point at the source's directories). A link leaving the root —
 * `npm link`, workspaces — is shipped as the content the program sees through it, since the
 * destination has no such target; a directory link that contains the root or loops is refused.
 */
async function walkLink(walk: Walk, abs: string, path: string, followed: readonly string[]): Promise<void> {
  const real = realOrUndefined(abs);
  if (real === undefined) {
    // Dangling: kept as written, so it dangles at the destination too; validation refuses it if it escapes.
    walk.links.push({ path, link: readlinkSync(abs) });
    return;
  }
  if (isInside(walk.root, real)) {
    // `.bin` links to the tools of left-out packages stay behind with them.
    if (isBelowAny(walk.behind, real)) return;
    walk.links.push({ path, link: relative(dirname(join(walk.root, path)), real) || '.' });
    return;
  }
  const st = statSync(real);
  if (st.isDirectory() && (isInside(real, walk.root) || followed.some((dir) => isInside(real, dir)))) {
    throw refuse(path, `symlink to ${real} contains the package root or loops: exclude it or replace it with a copy`);
  }
  if (!st.isDirectory()) walk.watch?.(dirname(real));
  return walkNode(walk, real, path, st, [...followed, real]);
}

/**
 * The packages from outside the root (packages.ts, `fromAbove`), each shipped as the content of
 * its real directory at its place, as a link leaving the root is; a dangling link there goes.
 */
async function walkPlaced(walk: Walk, placed: Placed): Promise<void> {
  walk.links = walk.links.filter(({ path }) => !placed.has(path));
  for (const [path, real] of placed) {
    if (isInside(real, walk.root)) throw refuse(path, `the package at ${real} contains the package root: the server cannot be shipped without it`);
    await walkNode(walk, real, path, statSync(real), [real]);
  }
}

/** The hash of a file found as it was sealed in a tree built from `manifest`, taken into the cache. */
function sealedHashes(manifest: Manifest, mtime: number): (found: Found) => string | undefined {
  const entries = new Map(manifest.entries.filter(isFileEntry).map((entry) => [entry.path, entry]));
  return ({ path, abs, st }) => {
    const entry = entries.get(path);
    if (entry === undefined || st.mtimeMs !== mtime || st.size !== entry.size) return undefined;
    hashCache.set(abs, { size: st.size, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs, ino: st.ino, hash: entry.hash });
    see(entry.hash, abs);
    return entry.hash;
  };
}

function cachedHash(abs: string, st: Stats): string | undefined {
  const cached = hashCache.get(abs);
  if (cached && cached.size === st.size && cached.mtimeMs === st.mtimeMs && cached.ctimeMs === st.ctimeMs && cached.ino === st.ino) {
    see(cached.hash, abs);
    hashStats.cached++;
    return cached.hash;
  }
  return undefined;
}

/** A file of at most SMALL_FILE bytes when listed; O_NONBLOCK, so that a FIFO put in its place cannot block the daemon. */
function hashSmall(abs: string, st: Stats): { hash: string; size: number } {
  const started = Date.now();
  const fd = openSync(abs, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const hasher = createHash('sha256');
    const size = update(hasher, readFileSync(fd));
    return { hash: remember(abs, st, started, hasher, size), size };
  } finally {
    closeSync(fd);
  }
}

/** The hash, cached unless the file was modified too recently to be trusted (see RACY_MS). */
function remember(abs: string, st: Stats, started: number, hasher: Hash, size: number): string {
  const hash = hasher.digest('hex');
  see(hash, abs);
  hashStats.hashed++;
  hashStats.bytesHashed += size;
  if (size === st.size && started - st.mtimeMs > RACY_MS) {
    hashCache.set(abs, { size, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs, ino: st.ino, hash });
  }
  return hash;
}

function update(hasher: Hash, bytes: Buffer): number {
  hasher.update(bytes);
  return bytes.length;
}

async function hashStream(hasher: Hash, abs: string): Promise<number> {
  let size = 0;
  for await (const chunk of createReadStream(abs, { highWaterMark: SMALL_FILE })) size += update(hasher, chunk as Buffer);
  return size;
}

function modeOf(st: Stats): FileMode {
  return (st.mode & 0o111) !== 0 ? 0o755 : 0o644;
}

/** Runs `fn` over `items`, at most `limit` at a time; stops starting new ones after the first failure. */
export async function forEachLimit<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: { error: unknown } | undefined;
  const worker = async (): Promise<void> => {
    while (failure === undefined && next < items.length) {
      await fn(items[next++]).catch((error: unknown) => {
        failure ??= { error };
      });
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failure !== undefined) throw failure.error;
}
