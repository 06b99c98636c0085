// Settling moves a source daemon left under way when it stopped (DESIGN §3, issue 7): the
// order is written durably before the signal; a restarted daemon reads it back, and when the
// server that still holds its calls registers again, asks the destination how far it got.
import { readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { openDaemon, within } from '../runtime/daemonlink.js';
import { writeStateFile as writeDurably } from '../runtime/statefile.js';
import { STEP_TIMEOUT_MS, type SourceContext } from './move.js';
import type { Server } from './names.js';

/** What `leaving/<id>/order.json` holds while a move is under way. */
export interface OrderRecord {
  id: string;
  name: string;
  to: string;
  graceMs: number;
}

const ORDER_FILE = 'order.json';

const RESOLVE_ATTEMPTS = 60;
const RESOLVE_RETRY_MS = 5000;

/** Written before the server is signalled: whom to ask, should this daemon stop mid-move. */
export function writeOrder(dir: string, order: OrderRecord): void {
  writeDurably(join(dir, ORDER_FILE), Buffer.from(JSON.stringify(order)));
}

export class Recovery {
  constructor(private readonly ctx: SourceContext) {}

  /** Moves a previous run of this daemon left under way (it stopped before they ended). */
  private readonly unresolved = new Map<string, OrderRecord>();

  /** True while a move a previous run began is not settled yet. */
  pending(id: string): boolean {
    return this.unresolved.has(id);
  }

  /** Reads what a daemon that stopped mid-move left in `leaving/`; removes what holds no order. */
  async loadUnresolved(): Promise<void> {
    const leaving = join(this.ctx.spool, 'leaving');
    for (const id of await readdir(leaving).catch(() => [] as string[])) {
      const order = await readFile(join(leaving, id, ORDER_FILE), 'utf8').then((text) => JSON.parse(text) as OrderRecord, () => undefined);
      const valid = order?.id === id && typeof order.to === 'string' && typeof order.name === 'string';
      if (valid && !this.ctx.forwards.made(id)) {
        this.unresolved.set(id, order);
        continue;
      }
      // A move whose forwarding entry was written is over but for its cleanup (and, perhaps, the
      // destination's word): its server may have retired already, so it is not waited for.
      if (valid) void this.statusAt(order).then(() => this.ctx.log(`migration ${id}: ${order.name} had moved to ${order.to}; settled after a restart`));
      await rm(join(leaving, id), { recursive: true, force: true });
    }
    if (this.unresolved.size > 0) this.ctx.log(`moves left under way by the previous run: ${[...this.unresolved.keys()].join(', ')}`);
  }

  /**
   * A server registered while holding its calls for move `id`, which a previous run of this
   * daemon began: the destination says whether its copy serves. If it does, the move is
   * committed; if it never got that far, it is rolled back. While the destination cannot be
   * asked, the server keeps holding: two live copies are worse than a wait.
   */
  async resolve(server: Server, id: string): Promise<void> {
    const order = this.unresolved.get(id);
    if (!order || order.name !== server.name) {
      this.ctx.notify(server, 'abort', [{ id, reason: 'this daemon has no record of that move' }]);
      return;
    }
    server.state = 'migrating';
    for (let attempt = 0; attempt < RESOLVE_ATTEMPTS; attempt++) {
      const status = await this.statusAt(order);
      if (status === undefined) {
        await new Promise((resolve) => setTimeout(resolve, RESOLVE_RETRY_MS));
        continue;
      }
      if (status.phase === 'started' && typeof status.address === 'string') {
        server.state = 'moved';
        this.ctx.notify(server, 'commit', [{ id, to: status.address, grace_ms: order.graceMs }]);
        await this.ctx.forwards.set({ name: server.name, to: status.address, daemon: order.to, epoch: status.epoch ?? 0, id });
        this.ctx.log(`migration ${id}: ${server.name} serves at ${status.address}: committed after a restart`);
      } else {
        server.state = 'serving';
        this.ctx.notify(server, 'abort', [{ id, reason: 'the source daemon stopped before the destination served' }]);
        this.ctx.log(`migration ${id}: rolled back after a restart; ${server.name} serves on here`);
      }
      this.unresolved.delete(id);
      await rm(join(this.ctx.spool, 'leaving', id), { recursive: true, force: true });
      return;
    }
    this.ctx.log(`migration ${id}: the destination ${order.to} did not answer; ${server.name} keeps holding its calls`);
  }

  /**
   * A server registered in its grace period after a move that a previous run of this daemon
   * committed but stopped before it recorded: the forwarding entry is written now.
   */
  async settleMoved(server: Server, moved: { to: string; epoch: number }): Promise<void> {
    const order = [...this.unresolved.values()].find((o) => o.name === server.name);
    if (!order) return;
    this.unresolved.delete(order.id);
    // The entry is on disk before the order goes: a crash in between leaves one of them.
    await this.ctx.forwards.set({ name: server.name, to: moved.to, daemon: order.to, epoch: moved.epoch, id: order.id });
    await rm(join(this.ctx.spool, 'leaving', order.id), { recursive: true, force: true }).catch(() => undefined);
    this.ctx.log(`migration ${order.id}: ${server.name} had moved to ${moved.to}; its forwarding entry is written after a restart`);
    // The destination may still wait for the commit this daemon did not send before it stopped.
    void this.statusAt(order);
  }

  /** What the destination knows of a move; undefined when it cannot be asked now. */
  private async statusAt(order: OrderRecord): Promise<{ phase: string; address?: string; epoch?: number } | undefined> {
    try {
      const link = await openDaemon(order.to, this.ctx.key, { timeout: STEP_TIMEOUT_MS });
      try {
        const status = (await within(STEP_TIMEOUT_MS, link.call('status', [order.id]))) as { phase: string; address?: string; epoch?: number };
        if (status.phase === 'started') await within(STEP_TIMEOUT_MS, link.call('commit', [order.id])).catch(() => undefined);
        else await within(STEP_TIMEOUT_MS, link.call('abort', [order.id, 'the source daemon restarted'])).catch(() => undefined);
        return status;
      } finally {
        link.close();
      }
    } catch {
      return undefined;
    }
  }

}
