// The destination's gate for a shipped program (DESIGN §6, issue 7): a manifest comes from a
// peer that holds the key but may be malicious, so it is checked whole before anything is staged.
import { RpcmigError } from '../runtime/errors.js';

/** A regular file: its content is the blob `hash`; only the executable bit of its mode travels. */
export interface FileEntry {
  path: string;
  size: number;
  mode: FileMode;
  hash: string;
}
/** A symbolic link whose target resolves inside the program root. */
export interface LinkEntry {
  path: string;
  link: string;
}
export type FileMode = 0o644 | 0o755;
export type Entry = FileEntry | LinkEntry;
/** Entries sorted by path (JavaScript string order); directories are implied by the paths. */
export interface Manifest {
  entries: Entry[];
}

export interface Limits {
  maxEntries: number;
  maxTotalBytes: number;
  maxFileBytes: number;
}
export const DEFAULT_LIMITS: Readonly<Limits> = { maxEntries: 200_000, maxTotalBytes: 2 ** 30, maxFileBytes: 2 ** 28 };

// Linux's PATH_MAX, NAME_MAX and MAXSYMLINKS: anything longer fails at materialisation anyway.
const MAX_PATH_BYTES = 4096;
const MAX_SEGMENT_BYTES = 255;
const MAX_LINK_HOPS = 40;
const HASH = /^[0-9a-f]{64}$/;
// Control characters are never needed in a program's file names and would forge log lines.
const FORBIDDEN_CHAR = /[\u0000-\u001f\u007f\\]/;
const PRINTABLE_ASCII = /^[\u0020-\u007e]*$/;

export function isFileEntry(entry: Entry): entry is FileEntry {
  return 'hash' in entry;
}

/** The refusal every check raises: it names the entry and the reason. */
export function refuse(path: string, reason: string): RpcmigError {
  const where = path === '' ? '' : `${JSON.stringify(path)}: `;
  return new RpcmigError('TRANSFER_REFUSED', `program refused: ${where}${reason}`, { path, reason });
}

/** Checks a manifest received from a peer; returns it typed, or throws naming the first bad entry. */
export function validateManifest(manifest: unknown, limits: Partial<Limits> = {}): Manifest {
  const max = { ...DEFAULT_LIMITS, ...limits };
  const entries = manifestEntries(manifest, max);
  let total = 0;
  entries.forEach((entry, i) => {
    checkEntry(entry, max);
    if (isFileEntry(entry)) total += entry.size;
    if (total > max.maxTotalBytes) throw refuse(entry.path, `program exceeds ${max.maxTotalBytes} bytes in total`);
    const previous = entries[i - 1];
    if (previous !== undefined && previous.path >= entry.path) {
      throw refuse(entry.path, previous.path === entry.path ? 'duplicate entry' : 'entries are not sorted by path');
    }
  });
  checkTree(entries);
  return { entries };
}

function manifestEntries(manifest: unknown, max: Limits): Entry[] {
  if (!isRecord(manifest) || !Array.isArray(manifest.entries) || Object.keys(manifest).length !== 1) {
    throw refuse('', 'not a manifest: expected { entries: [...] }');
  }
  if (manifest.entries.length > max.maxEntries) throw refuse('', `program has more than ${max.maxEntries} entries`);
  return manifest.entries as Entry[];
}

/** Shape, path and per-entry limits. The wire knows files and symlinks; anything else is refused. */
function checkEntry(entry: unknown, max: Limits): void {
  if (!isRecord(entry) || typeof entry.path !== 'string') throw refuse('', 'entry without a path');
  const { path } = entry;
  checkPath(path);
  const keys = Object.keys(entry).sort().join(',');
  if (keys === 'link,path') return checkLinkTarget(path, entry.link);
  if (keys !== 'hash,mode,path,size') throw refuse(path, `entry of unknown kind (${keys}): only files and symlinks are shipped`);
  if (typeof entry.hash !== 'string' || !HASH.test(entry.hash)) throw refuse(path, 'hash is not 64 lowercase hex digits');
  if (entry.mode !== 0o644 && entry.mode !== 0o755) throw refuse(path, 'mode is neither 0o644 nor 0o755');
  const { size } = entry;
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) throw refuse(path, 'size is not a safe integer');
  if (size > max.maxFileBytes) throw refuse(path, `file exceeds ${max.maxFileBytes} bytes`);
}

function checkPath(path: string): void {
  const bad = FORBIDDEN_CHAR.exec(path);
  if (bad !== null) throw refuse(path, `contains ${codePoint(bad[0])}`);
  if (path.startsWith('/')) throw refuse(path, 'absolute path');
  if (Buffer.byteLength(path) > MAX_PATH_BYTES) throw refuse(path, `path longer than ${MAX_PATH_BYTES} bytes`);
  for (const segment of path.split('/')) {
    if (segment === '') throw refuse(path, 'empty path segment');
    if (segment === '.' || segment === '..') throw refuse(path, `"${segment}" path segment`);
    if (Buffer.byteLength(segment) > MAX_SEGMENT_BYTES) throw refuse(path, `segment longer than ${MAX_SEGMENT_BYTES} bytes`);
  }
  if (!PRINTABLE_ASCII.test(path) && path.normalize('NFC') !== path) throw refuse(path, 'not NFC-normalised');
}

function checkLinkTarget(path: string, target: unknown): void {
  if (typeof target !== 'string' || target === '') throw refuse(path, 'symlink without a target');
  const bad = FORBIDDEN_CHAR.exec(target);
  if (bad !== null) throw refuse(path, `symlink target contains ${codePoint(bad[0])}`);
  if (target.startsWith('/')) throw refuse(path, `symlink target ${JSON.stringify(target)} is absolute`);
  if (Buffer.byteLength(target) > MAX_PATH_BYTES) throw refuse(path, `symlink target longer than ${MAX_PATH_BYTES} bytes`);
}

/** Whole-tree rules: no entry inside a file or link, no names that collide, no link leaving the root. */
function checkTree(entries: readonly Entry[]): void {
  const byPath = new Map(entries.map((entry) => [entry.path, entry]));
  const folded = new Map<string, string>();
  const fold = (path: string): void => {
    const key = foldName(path);
    const other = folded.get(key);
    if (other !== undefined && other !== path) throw refuse(path, `collides with ${JSON.stringify(other)} after Unicode and case folding`);
    folded.set(key, path);
  };
  for (const { path } of entries) {
    fold(path);
    for (let cut = path.indexOf('/'); cut !== -1; cut = path.indexOf('/', cut + 1)) {
      const dir = path.slice(0, cut);
      if (byPath.has(dir)) throw refuse(path, `lies inside ${JSON.stringify(dir)}, which is not a directory`);
      fold(dir);
    }
  }
  const links = new Map<string, string>();
  for (const entry of entries) if (!isFileEntry(entry)) links.set(entry.path, entry.link);
  for (const [path, target] of links) resolveLink(path, target, links);
}

// What a case-insensitive or normalising file system (APFS, NTFS, some CIFS mounts) would
// treat as one name: the collision class of node-tar's CVE-2021-37712.
function foldName(path: string): string {
  // Printable ASCII is its own NFKC form; the shortcut keeps validation cheap on big trees.
  if (PRINTABLE_ASCII.test(path)) return path.toLowerCase();
  return path.normalize('NFKC').toUpperCase().toLowerCase().normalize('NFKC');
}

/**
 * Resolves a link the way the kernel will at the destination, segment by segment and through
 * the manifest's other links (`a -> l/..` with `l -> .` leaves the root although it looks inside).
 */
function resolveLink(path: string, target: string, links: ReadonlyMap<string, string>): void {
  let hops = 0;
  const walk = (from: readonly string[], via: string): string[] => {
    const at = [...from];
    for (const segment of via.split('/')) {
      if (segment === '' || segment === '.') continue;
      if (segment === '..') {
        if (at.pop() === undefined) throw refuse(path, `symlink target ${JSON.stringify(target)} leaves the root`);
        continue;
      }
      at.push(segment);
      const next = links.get(at.join('/'));
      if (next === undefined) continue;
      if (++hops > MAX_LINK_HOPS) throw refuse(path, 'too many levels of symlinks');
      at.splice(0, at.length, ...walk(at.slice(0, -1), next));
    }
    return at;
  };
  walk(path.split('/').slice(0, -1), target);
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function codePoint(char: string): string {
  return `U+${char.codePointAt(0)?.toString(16).toUpperCase().padStart(4, '0')}`;
}
