// Empty files the blob store keeps ready for a first move's blobs (blobs.ts), and empty
// directories for the trees of the programs that arrive (materialize.ts). Creating a file or a
// directory is what a first move costs: on ext4 without a journal, each new inode is found by
// skipping every inode freed in the last minutes, up to a millisecond of kernel time each on a
// host that deletes many files. A blank, created while the daemon is idle, turns a blob's
// creation into an open, a write and a rename, and a directory's into a rename. Blanks outlive
// the daemon: a restart keeps them.
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { lstat, mkdir, open, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';

/** Blanks a daemon keeps (`--blanks`): a program of that many files arrives without creating one. */
export const DEFAULT_BLANKS = 2048;
export const MAX_BLANKS = 65536;
/** Blank directories a store keeps per blank file: a tree of node_modules has a directory for every 5–10 files. */
export const DIRS_PER_BLANK = 1 / 4;
const BLANK = /^blank-[0-9a-f]{16}$/;
// The refill waits this long after the last blank was taken, so that it does not compete with
// the move that took them; a blank taken meanwhile, or a move under way, pauses it again.
const REFILL_DELAY_MS = 1000;

export class Blanks {
  private readonly ready: string[] = [];
  private timer: NodeJS.Timeout | undefined;
  private filling = false;
  private closed = false;
  private taken = 0;

  /** `idle`: no move is under way here, so blanks may be made now. `directories`: blank directories, not files. */
  constructor(private readonly dir: string, private readonly target: number, private readonly log: (line: string) => void, private readonly idle: () => boolean, private readonly directories = false) {}

  /** Keeps the blanks an earlier daemon left (empty regular files, or empty directories), removes anything else, and starts filling. */
  async open(): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    for (const name of await readdir(this.dir)) {
      const path = join(this.dir, name);
      const st = await lstat(path).catch(() => undefined);
      const empty = this.directories
        ? st?.isDirectory() === true && (await readdir(path).catch(() => [null])).length === 0
        : st?.isFile() === true && st.size === 0 && st.nlink === 1;
      if (empty && BLANK.test(name) && this.ready.length < this.target) this.ready.push(path);
      else await rm(path, { recursive: true, force: true });
    }
    this.schedule(0);
  }

  /** Blanks ready now. */
  get count(): number {
    return this.ready.length;
  }

  /** A blank's path, to be opened without O_CREAT, or renamed into place (and renamed or removed), or undefined when none is left. */
  take(): string | undefined {
    const path = this.ready.pop();
    if (path === undefined) return undefined;
    this.taken++;
    this.schedule(REFILL_DELAY_MS);
    return path;
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
  }

  private schedule(delayMs: number): void {
    clearTimeout(this.timer);
    if (this.closed || this.ready.length >= this.target) return;
    this.timer = setTimeout(() => void this.fill(), delayMs);
    this.timer.unref();
  }

  /** Creates blanks one at a time (one thread of the pool) up to the target, until a blank is taken or a move begins. */
  private async fill(): Promise<void> {
    if (this.filling) return;
    this.filling = true;
    const taken = this.taken;
    let busy = false;
    try {
      while (!this.closed && this.ready.length < this.target && this.taken === taken) {
        busy = !this.idle();
        if (busy) break;
        const path = join(this.dir, `blank-${randomBytes(8).toString('hex')}`);
        if (this.directories) await mkdir(path);
        else await (await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600)).close();
        this.ready.push(path);
      }
    } catch (error) {
      // Only a first move's speed depends on blanks: it creates its files itself.
      if (!this.closed) this.log(`blank ${this.directories ? 'directories' : 'files'} for arriving programs: ${(error as Error).message}; ${this.ready.length} ready`);
    } finally {
      this.filling = false;
      if (this.taken !== taken || busy) this.schedule(REFILL_DELAY_MS);
    }
  }
}
