// The server's pending-migration state machine (DESIGN §3 steps 3, 4, 6, 8). Once the order
// is taken, calls already executing finish and reply; calls that arrive are held, not run.
// Commit answers the held calls MOVED the instant the destination serves (one round trip for
// the client, no polling); abort runs them here, as if nothing had happened.
import type { DaemonLink } from './daemonlink.js';
import type { Registration } from './register.js';
import type { WireError } from './errors.js';
import { failpoint } from './failpoints.js';
import { snapshot } from './state.js';

/** A call that arrived while migrating: run it later, or answer it without running it. */
export interface HeldCall {
  run(): void;
  answer(error: WireError): void;
}

/** The order a server takes from its daemon after SIGUSR2. */
export interface Order {
  id: string;
  /** Where the snapshot goes: a file in the daemon's spool. */
  statePath: string;
  /** A snapshot of at most this many bytes goes in the report instead (`SnapshotReport.state`); none if absent. */
  inline?: number;
}

export type Phase =
  | { name: 'serving' }
  | { name: 'quiescing'; order: Order; since: number }
  | { name: 'snapshotted'; order: Order; since: number }
  | { name: 'moved'; to: string; epoch: number };

/** How long a call may be held before it is answered MIGRATING (not executed; call again later). */
export const HOLD_LIMIT_MS = 30_000;

export class Migration {
  phase: Phase = { name: 'serving' };
  private held: HeldCall[] = [];
  private overdue = false;
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly log: (line: string) => void) {}

  /** True on the hot path while calls run here; one field test per call. */
  accepting = true;

  /** Takes a call that arrived while not accepting. */
  hold(call: HeldCall): void {
    const phase = this.phase;
    if (phase.name === 'moved') return call.answer(moved(phase.to, phase.epoch));
    if (this.overdue) return call.answer(migrating());
    this.held.push(call);
  }

  /** serving -> quiescing -> snapshotted -> moved, or back to serving; each logged once. */
  enter(next: Phase): void {
    const from = this.phase.name;
    this.phase = next;
    this.accepting = next.name === 'serving';
    this.log(`migration: ${from} -> ${next.name}${next.name === 'moved' ? ` (to ${next.to}, epoch ${next.epoch})` : ''}`);
    if (next.name === 'quiescing') this.timer = setTimeout(() => this.expire(), HOLD_LIMIT_MS).unref();
    if (next.name === 'serving' || next.name === 'moved') clearTimeout(this.timer);
    if (next.name === 'serving') this.release((call) => call.run());
    if (next.name === 'moved') this.release((call) => call.answer(moved(next.to, next.epoch)));
  }

  private release(each: (call: HeldCall) => void): void {
    const held = this.held;
    this.held = [];
    this.overdue = false;
    for (const call of held) each(call);
  }

  /** The move takes too long: held calls are answered MIGRATING, so clients back off. */
  private expire(): void {
    this.overdue = true;
    this.log(`migration: calls held over ${HOLD_LIMIT_MS} ms are answered MIGRATING`);
    const held = this.held;
    this.held = [];
    for (const call of held) call.answer(migrating());
  }
}

function moved(to: string, epoch: number): WireError {
  return { code: 'MOVED', message: `the server moved to ${to}; call again there (not executed)`, to, epoch };
}

function migrating(): WireError {
  return { code: 'MIGRATING', message: 'the server is migrating; call again later (not executed)' };
}

/** What the control loop needs of a server. */
export interface Movable {
  readonly name: string;
  readonly migration: Migration;
  /** Raised by every move: the server's lineage, newest wins. */
  readonly epoch: number;
  /** Resolves when no call is executing. */
  whenIdle(): Promise<void>;
  /** After the grace period: stop serving and end the process. */
  retire(): Promise<void>;
}

/** What a server reports when its snapshot is written (or could not be). */
export interface SnapshotReport {
  id: string;
  bytes?: number;
  quiesce_ms?: number;
  snapshot_ms?: number;
  /** The state file itself, when the order let it come inline; else it is at the order's statePath. */
  state?: Uint8Array;
  /** When the server stopped taking calls, on the host's monotonic clock (`monotonicMs`): where the clients' pause begins. */
  stopped_at?: number;
  error?: string;
}

/**
 * The server's half of the protocol over its control connection. SIGUSR2 (the paper's
 * user-defined signal) says "an order is waiting": the server asks for it, quiesces, writes
 * its snapshot and reports; the daemon's `commit` or `abort` notification ends the move.
 */
export function takeOrders(registration: Registration, server: Movable, log: (line: string) => void): () => void {
  const { migration } = server;
  const onSignal = (): void => void signalled(registration.link, server, log);
  process.on('SIGUSR2', onSignal);
  const attach = (link: DaemonLink): void => {
    link.onNotification((method, params) => {
      const verdict = checkVerdict(params[0]);
      const phase = migration.phase;
      if (!verdict || (phase.name !== 'quiescing' && phase.name !== 'snapshotted') || phase.order.id !== verdict.id) {
        return log(`ignored ${method} from the daemon: no such migration in progress`);
      }
      if (method === 'abort') {
        log(`migration ${verdict.id} aborted: ${verdict.reason ?? 'no reason given'}; serving on here`);
        migration.enter({ name: 'serving' });
      } else if (method === 'commit' && typeof verdict.to === 'string') {
        migration.enter({ name: 'moved', to: verdict.to, epoch: server.epoch + 1 });
        const grace = typeof verdict.grace_ms === 'number' ? verdict.grace_ms : 60_000;
        setTimeout(() => void failpoint('retire.before', log).then(() => server.retire()), grace);
      }
    });
    void link.closed.then(() => {
      // Before the snapshot the state has not left: serve on. After it, only the daemon's word
      // may end the move, so calls stay held (and are answered MIGRATING past the hold limit).
      if (migration.phase.name === 'quiescing') migration.enter({ name: 'serving' });
    });
  };
  attach(registration.link);
  registration.onRelink(attach);
  return () => process.off('SIGUSR2', onSignal);
}

async function signalled(link: DaemonLink, server: Movable, log: (line: string) => void): Promise<void> {
  const { migration } = server;
  if (migration.phase.name !== 'serving') return log('SIGUSR2 while a migration is in progress; ignored');
  let order: Order | null;
  try {
    order = checkOrder(await link.call('order', []));
  } catch (error) {
    return log(`SIGUSR2, but the daemon gave no order (${(error as Error).message}); ignored`);
  }
  if (order === null) return log('SIGUSR2 with no migration order pending; ignored');
  const since = Date.now();
  const start = performance.now();
  const stopped = monotonicMs();
  migration.enter({ name: 'quiescing', order, since });
  await failpoint('quiesce.before', log);
  await server.whenIdle();
  // The daemon may have given up on this move meanwhile (its abort came first): no snapshot then.
  const now = migration.phase as Phase;
  if (now.name !== 'quiescing' || now.order.id !== order.id) return log(`migration ${order.id} ended before its snapshot`);
  const quiesced = performance.now();
  let report: SnapshotReport;
  try {
    const { size, inline } = snapshot(order.statePath, order.inline ?? -1);
    const written = performance.now();
    report = { id: order.id, bytes: size, quiesce_ms: quiesced - start, snapshot_ms: written - quiesced, stopped_at: stopped, ...(inline ? { state: inline } : {}) };
    migration.enter({ name: 'snapshotted', order, since });
  } catch (error) {
    report = { id: order.id, error: `the snapshot failed: ${(error as Error).message}` };
  }
  // A state sent inline leaves with the report at once: from then on it outlives this process, as a written file does.
  const reported = report.state ? link.call('snapshot', [report]) : undefined;
  reported?.catch(() => undefined);
  await failpoint('snapshot.after', log);
  await (reported ?? link.call('snapshot', [report])).catch((error: Error) => log(`could not report the snapshot: ${error.message}`));
}

/**
 * Milliseconds on the host's monotonic clock, which every process on the host shares (unlike
 * `performance.now()`, which counts from each process's start): a server and its daemon
 * compare instants with it.
 */
export function monotonicMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

function checkOrder(value: unknown): Order | null {
  if (value === null || value === undefined) return null;
  const { id, statePath, inline } = value as Partial<Order>;
  if (typeof id !== 'string' || typeof statePath !== 'string') throw new Error('the order is not { id, statePath }');
  return { id, statePath, ...(Number.isSafeInteger(inline) ? { inline } : {}) };
}

function checkVerdict(value: unknown): { id: string; to?: unknown; grace_ms?: unknown; reason?: string } | undefined {
  if (typeof value !== 'object' || value === null || typeof (value as { id?: unknown }).id !== 'string') return undefined;
  return value as { id: string };
}
