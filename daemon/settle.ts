// A destination that did not hear how a move ended — it restarted mid-move, or the source's
// commit never came — asks the source daemon (`outcome`) until it says, and acts on the answer:
// the server the move brought serves here, or it is ended and its process may not register.
import { readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { openDaemon, within } from '../runtime/daemonlink.js';
import type { ArrivalContext } from './arrive.js';
import { end } from './launch.js';
import { ARRIVAL_RECORD_FILE, checkRecord, marksOf, type ArrivalRecord } from './shipment.js';

/** How a move ended, as its source daemon tells it. */
export type Outcome = 'committed' | 'aborted' | 'pending';

/** How often, and how many times, a destination asks the source how a move ended. */
const SETTLE_RETRY_MS = 1000;
const SETTLE_ATTEMPTS = 600;

export class Settlement {
  /** Moves this daemon did not hear the end of, by id. */
  private readonly unsettled = new Map<string, ArrivalRecord>();
  /** Moves the source rolled back after this daemon restarted: their processes must not register. */
  private readonly abandoned = new Set<string>();

  constructor(private readonly ctx: Pick<ArrivalContext, 'spool' | 'key' | 'confirm' | 'evict' | 'log'>) {}

  /**
   * What a previous run left in `arriving/`: moves it did not hear the end of. Each is settled
   * by asking its source; meanwhile a server one of them started is held as `arriving`.
   */
  async load(): Promise<void> {
    const arriving = join(this.ctx.spool, 'arriving');
    for (const id of await readdir(arriving).catch(() => [] as string[])) {
      const record = await readFile(join(arriving, id, ARRIVAL_RECORD_FILE), 'utf8').then(checkRecord, () => undefined);
      if (record?.id !== id) {
        await rm(join(arriving, id), { recursive: true, force: true });
        continue;
      }
      this.ctx.log(`migration ${id}: ${record.name} was arriving from ${record.source} when this daemon stopped; asking how it ended`);
      this.begin(record);
    }
  }

  /** Asks the source of this move how it ended, until it says. */
  begin(record: ArrivalRecord): void {
    this.unsettled.set(record.id, record);
    void this.settle(record);
  }

  /** The move, while its end is not known here. */
  record(id: string): ArrivalRecord | undefined {
    return this.unsettled.get(id);
  }

  /** Whether a move of a server of this name is still being settled. */
  holds(name: string): boolean {
    return [...this.unsettled.values()].some((record) => record.name === name);
  }

  /** How a process this move started stands: held until settled, or refused (rolled back). */
  state(id: string): 'unsettled' | 'abandoned' | undefined {
    if (this.unsettled.has(id)) return 'unsettled';
    return this.abandoned.has(id) ? 'abandoned' : undefined;
  }

  /** Asks the source until it says committed or aborted, and acts on the answer. */
  private async settle(record: ArrivalRecord): Promise<void> {
    const { id, name, source } = record;
    for (let attempt = 0; attempt < SETTLE_ATTEMPTS; attempt++) {
      const outcome = await this.askSource(record);
      if (outcome === 'committed') {
        this.unsettled.delete(id);
        this.ctx.confirm(name, id);
        this.ctx.log(`migration ${id}: ${source} committed it; ${name} serves here`);
      } else if (outcome === 'aborted') {
        this.unsettled.delete(id);
        this.abandoned.add(id);
        this.ctx.evict(name, id);
        if (record.pid !== undefined && end(record.pid, marksOf(record))) this.ctx.log(`migration ${id}: ended pid ${record.pid}`);
        this.ctx.log(`migration ${id}: ${source} rolled it back; ${name} serves there, not here`);
      } else {
        await new Promise((resolve) => setTimeout(resolve, SETTLE_RETRY_MS));
        continue;
      }
      await rm(join(this.ctx.spool, 'arriving', id), { recursive: true, force: true });
      return;
    }
    this.ctx.log(`migration ${id}: ${source} did not say how the move ended; ${name} stays held here`);
  }

  private askSource({ id, source }: ArrivalRecord): Promise<Outcome | undefined> {
    return askOutcome(this.ctx.key, source, id);
  }
}

/** How the move `id` ended, as its source daemon says; undefined if it does not answer. */
export async function askOutcome(key: Buffer, source: string, id: string): Promise<Outcome | undefined> {
  try {
    const link = await openDaemon(source, key, { timeout: SETTLE_RETRY_MS * 2 });
    try {
      const answer = (await within(SETTLE_RETRY_MS * 2, link.call('outcome', [id]))) as { outcome?: unknown };
      return answer?.outcome === 'committed' || answer?.outcome === 'aborted' || answer?.outcome === 'pending' ? answer.outcome : undefined;
    } finally {
      link.close();
    }
  } catch {
    return undefined;
  }
}
