// Forwarding entries (DESIGN §3 step 6): where each server that moved away from this host
// went. Kept in `<spool>/forwards.json`, written durably, so they outlive the old process and
// a daemon restart.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeStateFile as writeDurably } from '../runtime/statefile.js';
import type { Forward } from './names.js';

export class Forwards {
  private readonly entries = new Map<string, Forward>();
  private readonly file: string;

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

  /** Records the entry durably before it returns. */
  set(entry: Forward): void {
    this.entries.set(entry.name, entry);
    this.save();
  }

  /**
   * A server of that name lives here again. Saved after the current reply has left: a stale
   * entry that a crash might leave is overridden by the server registered under its name.
   */
  delete(name: string): void {
    if (!this.entries.delete(name)) return;
    setImmediate(() => {
      try {
        this.save();
      } catch (error) {
        this.log(`could not save ${this.file}: ${(error as Error).message}`);
      }
    });
  }

  private save(): void {
    writeDurably(this.file, Buffer.from(JSON.stringify({ forwards: this.list() }, null, 1) + '\n'));
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
