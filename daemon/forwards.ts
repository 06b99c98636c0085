// Forwarding entries (DESIGN §3 step 6): where each server that moved away from this host
// went. Kept in `<spool>/forwards.json`, written durably, so they outlive the old process and
// a daemon restart.
import { randomBytes } from 'node:crypto';
import { constants, readFileSync } from 'node:fs';
import { open, rename, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Forward } from './names.js';

export class Forwards {
  private readonly entries = new Map<string, Forward>();
  private readonly file: string;
  /** Saves run one after another, each writing the entries as they are when its turn comes. */
  private saving: Promise<void> = Promise.resolve();

  constructor(spool: string, private readonly log: (line: string) => void) {
    this.file = join(spool, 'forwards.json');
    for (const entry of read(this.file, log)) this.entries.set(entry.name, entry);
  }

  get(name: string): Forward | undefined {
    return this.entries.get(name);
  }

  list(): Forward[] {
    return [...this.entries.values()];
  }

  /** True when a move with this id made an entry kept here. */
  made(id: string): boolean {
    return this.list().some((entry) => entry.id === id);
  }

  /**
   * Records the entry: it counts at once, and is on disk when the promise resolves. The write
   * does not hold up the daemon: a source commits, then saves while its probe of the new
   * server runs.
   */
  set(entry: Forward): Promise<void> {
    this.entries.set(entry.name, entry);
    return this.save();
  }

  /**
   * A server of that name lives here again. A stale entry that a crash might leave on disk is
   * overridden by the server registered under its name.
   */
  delete(name: string): void {
    if (!this.entries.delete(name)) return;
    this.save().catch((error: Error) => this.log(`could not save ${this.file}: ${error.message}`));
  }

  private save(): Promise<void> {
    const saved = this.saving.then(() => writeDurably(this.file, JSON.stringify({ forwards: this.list() }, null, 1) + '\n'));
    this.saving = saved.catch(() => undefined);
    return saved;
  }
}

/** Replaces `file` with `text`, durably: written and synced under a temporary name, renamed, its directory synced. */
async function writeDurably(file: string, text: string): Promise<void> {
  const temporary = `${file}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    const handle = await open(temporary, 'wx', 0o600);
    try {
      await handle.writeFile(text);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temporary, file);
  } catch (error) {
    await rm(temporary, { force: true });
    throw error;
  }
  const dir = await open(dirname(file), constants.O_RDONLY);
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}

function read(file: string, log: (line: string) => void): Forward[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return [];
  }
  try {
    const { forwards } = JSON.parse(text) as { forwards: Forward[] };
    return forwards
      .filter((f) => typeof f.name === 'string' && typeof f.to === 'string' && typeof f.daemon === 'string')
      .map((f) => ({ ...f, epoch: Number.isSafeInteger(f.epoch) ? f.epoch : 0, id: typeof f.id === 'string' ? f.id : undefined }));
  } catch (error) {
    log(`ignored ${file}: not a forwards file (${(error as Error).message})`);
    return [];
  }
}
