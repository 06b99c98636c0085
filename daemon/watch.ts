// Whether a program's tree changed since it was last walked, as the kernel tells it (inotify,
// through a watch on each of its directories): an unchanged tree need not be listed again at
// its next move, so a move of a large program costs what a small one does. A tree counts as
// unchanged only while every directory of it is watched, on a filesystem whose changes this
// host sees: after any event or error the next walk lists it in full (and watches it again),
// and a tree with a directory that cannot be watched is listed at every walk.
import { statfsSync, watch, type FSWatcher } from 'node:fs';

/**
 * Filesystems whose every change reaches a watch here: ext2/3/4, XFS, Btrfs, tmpfs, overlay,
 * F2FS. Not network or FUSE filesystems, which other hosts may change unseen.
 */
const LOCAL_FILESYSTEMS = new Set([0xef53, 0x58465342, 0x9123683e, 0x01021994, 0x794c7630, 0xf2f52010]);
/** Directories watched at most, over all trees; a tree beyond that is walked every time. */
const MOST_WATCHED = 20_000;
let watched = 0;

export class TreeWatch {
  private readonly watchers: FSWatcher[] = [];
  private readonly dirs = new Set<string>();
  private spoiled = false;

  /** True while nothing below the tree's watched directories has changed since they were watched. */
  get clean(): boolean {
    return !this.spoiled;
  }

  /** Watches `dir` before it is listed or read (see ManifestOptions.watch); once, however often it is given. */
  add(dir: string): void {
    if (this.spoiled || this.dirs.has(dir)) return;
    this.dirs.add(dir);
    try {
      if (watched >= MOST_WATCHED || !LOCAL_FILESYSTEMS.has(statfsSync(dir).type)) return this.spoil();
      const watcher = watch(dir, { persistent: false }, () => this.spoil());
      watcher.on('error', () => this.spoil());
      this.watchers.push(watcher);
      watched++;
    } catch {
      this.spoil();
    }
  }

  /** Something changed, or may have: the next walk lists the tree. */
  spoil(): void {
    this.spoiled = true;
    this.close();
  }

  close(): void {
    for (const watcher of this.watchers) watcher.close();
    watched -= this.watchers.length;
    this.watchers.length = 0;
  }
}
