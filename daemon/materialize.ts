// The destination builds the shipped program's tree (DESIGN §3 step 5) from its blob store:
// hard links where it can, so that a cached program costs no copy, all of it inside `dest`.
import { constants } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { chmod, copyFile, link, mkdir, realpath, rename, rm, stat, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { BlobStore } from './blobs.js';
import { forEachLimit } from './manifest.js';
import { isFileEntry, refuse, validateManifest, type FileEntry, type Limits, type Manifest } from './validate.js';

const PLACE_CONCURRENCY = 32;

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
    await makeDirectories(manifest, dest);
    const files = manifest.entries.filter(isFileEntry);
    await forEachLimit(files, PLACE_CONCURRENCY, (entry) => placeFile(store, entry, join(dest, entry.path)));
    // Links last: until now no link exists in `dest`, so no write above can pass through one.
    for (const entry of manifest.entries) if (!isFileEntry(entry)) await symlink(entry.link, join(dest, entry.path));
  } catch (error) {
    await rm(dest, { recursive: true, force: true });
    throw error;
  }
}

/** Every directory the paths imply, parents first, each checked to resolve where it was made. */
async function makeDirectories(manifest: Manifest, dest: string): Promise<void> {
  const dirs = new Set<string>();
  for (const { path } of manifest.entries) {
    for (let cut = path.indexOf('/'); cut !== -1; cut = path.indexOf('/', cut + 1)) dirs.add(path.slice(0, cut));
  }
  const realDest = await realpath(dest);
  // Sorted, a directory comes before everything below it.
  for (const dir of [...dirs].sort()) {
    await mkdir(join(dest, dir));
    if ((await realpath(join(dest, dir))) !== join(realDest, dir)) throw refuse(dir, 'directory resolves outside the destination');
  }
}

async function placeFile(store: BlobStore, entry: FileEntry, target: string): Promise<void> {
  const blob = store.path(entry.hash);
  if (entry.mode === 0o644) {
    // link(2) never follows or replaces an existing name at `target`.
    const linked = await link(blob, target).then(
      () => true,
      (error: NodeJS.ErrnoException) => {
        if (error.code === 'EXDEV') return false;
        throw error;
      },
    );
    if (linked) return;
  }
  // COPYFILE_EXCL opens with O_CREAT|O_EXCL, which refuses an existing name, even a symlink.
  await copyFile(blob, target, constants.COPYFILE_EXCL | constants.COPYFILE_FICLONE);
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
