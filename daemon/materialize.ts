// The destination builds the shipped program's tree (DESIGN §3 step 5) from its blob store:
// hard links where it can, so that a cached program costs no copy, all of it inside `dest`.
import { constants, linkSync, mkdirSync, realpathSync, renameSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { chmod, copyFile, mkdir, realpath, rename, rm, stat, symlink } from 'node:fs/promises';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { join } from 'node:path';
import { BlobStore } from './blobs.js';
import { forEachLimit } from './manifest.js';
import { isFileEntry, refuse, validateManifest, type FileEntry, type Limits, type Manifest } from './validate.js';

const PLACE_CONCURRENCY = 32;
// Links or directories made between two yields to the event loop (~2.5 ms): made synchronously,
// a link took ~20 µs here, against ~25–40 µs each through the thread pool, 32 at a time; a
// directory's two calls, through the pool one after the other, ~0.2 ms in a busy daemon.
const LINK_SLICE = 128;

/**
 * Creates `dest` (which must not exist; its parent must) holding the program. Files of mode
 * 0o644 are hard links to their read-only, shared blob, so they read as 0o444; files of mode
 * 0o755 get their own copy, since a mode change on a hard link would change the blob for every
 * program. On failure `dest` is removed and nothing else was touched.
 */
export async function materialize(manifest: Manifest, store: BlobStore, dest: string, limits?: Partial<Limits>): Promise<void> {
  validateManifest(manifest, limits);
  const lacking = await store.missing(manifest);
  if (lacking.length > 0) throw refuse('', `${lacking.length} blobs missing from the store, the first ${lacking[0]}`);
  // A fresh directory is what makes the guards below sufficient: every path in it is ours.
  await mkdir(dest);
  try {
    await makeDirectories(store, manifest, dest);
    const copies: FileEntry[] = [];
    let linked = 0;
    for (const entry of manifest.entries) {
      if (!isFileEntry(entry)) continue;
      if (entry.mode !== 0o644 || !linkFile(store, entry, join(dest, entry.path))) copies.push(entry);
      else if (++linked % LINK_SLICE === 0) await nextTurn();
    }
    await forEachLimit(copies, PLACE_CONCURRENCY, (entry) => copyOwn(store, entry, join(dest, entry.path)));
    // Links last: until now no link exists in `dest`, so no write above can pass through one.
    for (const entry of manifest.entries) if (!isFileEntry(entry)) await symlink(entry.link, join(dest, entry.path));
  } catch (error) {
    await rm(dest, { recursive: true, force: true });
    throw error;
  }
}

/**
 * Every directory the paths imply, parents first, each checked to resolve where it was made: a
 * blank directory renamed into place while the store has one (creating a directory costs a new
 * inode, as a file does: see blanks.ts), else a new one. Nothing exists yet where they go.
 */
async function makeDirectories(store: BlobStore, manifest: Manifest, dest: string): Promise<void> {
  const dirs = new Set<string>();
  for (const { path } of manifest.entries) {
    for (let cut = path.indexOf('/'); cut !== -1; cut = path.indexOf('/', cut + 1)) dirs.add(path.slice(0, cut));
  }
  const realDest = await realpath(dest);
  let made = 0;
  // Sorted, a directory comes before everything below it.
  for (const dir of [...dirs].sort()) {
    const path = join(dest, dir);
    if (!renameBlank(store.blankDirs.take(), path)) mkdirSync(path);
    if (realpathSync.native(path) !== join(realDest, dir)) throw refuse(dir, 'directory resolves outside the destination');
    if (++made % LINK_SLICE === 0) await nextTurn();
  }
}

/** Puts the blank directory `blank` at `path`; false when there is none, or it is gone. */
function renameBlank(blank: string | undefined, path: string): boolean {
  if (blank === undefined) return false;
  try {
    renameSync(blank, path);
    return true;
  } catch {
    return false;
  }
}

/** Hard-links a file of mode 0o644 to its blob; false where links cannot reach the blob (EXDEV). */
function linkFile(store: BlobStore, entry: FileEntry, target: string): boolean {
  try {
    // link(2) never follows or replaces an existing name at `target`.
    linkSync(store.path(entry.hash), target);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EXDEV') return false;
    throw error;
  }
}

/** A file of its own, with the entry's mode. */
async function copyOwn(store: BlobStore, entry: FileEntry, target: string): Promise<void> {
  // COPYFILE_EXCL opens with O_CREAT|O_EXCL, which refuses an existing name, even a symlink.
  await copyFile(store.path(entry.hash), target, constants.COPYFILE_EXCL | constants.COPYFILE_FICLONE);
  await chmod(target, entry.mode);
}

/** Where the tree of a program (its manifest's id) lives in the spool. */
export function programDir(spool: string, program: string): string {
  return join(spool, 'programs', program);
}

/**
 * The program's tree, shared by every move of the same manifest (hard links into the blob
 * store): built under a temporary name and renamed whole if absent. `built`: this call built it.
 */
export async function placeProgram(spool: string, store: BlobStore, manifest: Manifest, program: string, id: string): Promise<{ dir: string; built: boolean }> {
  const dir = programDir(spool, program);
  if (await exists(dir)) return { dir, built: false };
  await mkdir(join(spool, 'programs'), { recursive: true, mode: 0o700 });
  const staging = `${dir}.${id}.${randomBytes(4).toString('hex')}`;
  await materialize(manifest, store, staging);
  // A move of the same program that arrived meanwhile built it first: that tree stays.
  const built = await rename(staging, dir).then(() => true, async () => {
    await rm(staging, { recursive: true, force: true });
    return false;
  });
  return { dir, built };
}

export function exists(path: string): Promise<boolean> {
  return stat(path).then(() => true, () => false);
}
