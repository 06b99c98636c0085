// A move as the source daemon's coordinator (migrate.ts) holds it: what it is told, what it
// reports (its breakdown, or how it failed), its steps and the time-outs that bound each of them.
import { formatAddress, parseAddress, within, type Address, type DaemonLink } from '../runtime/daemonlink.js';
import { connect, invoke } from '../runtime/client.js';
import { RpcmigError } from '../runtime/errors.js';
import { WHEREIS } from '../runtime/server.js';
import { monotonicMs, type SnapshotReport } from '../runtime/migrating.js';
import type { Deferred } from './deferred.js';
import type { Forwards } from './forwards.js';
import { checkName, type Names, type Server } from './names.js';
import type { Meter } from './progress.js';
import type { Programs } from './programs.js';
import { failpoint } from '../runtime/failpoints.js';
import type { SendPiece, Tailed } from './statecopy.js';

export interface SourceContext {
  key: Buffer;
  spool: string;
  advertised: string;
  /** Random per daemon process: a destination answering with ours is this daemon. */
  daemonId: string;
  names: Names;
  forwards: Forwards;
  /** The program trees this daemon walks and ships. */
  programs: Programs;
  /** Sends a notification on the server's control connection. */
  notify(server: Server, method: string, params: unknown[]): void;
  /** The source of the move that started this server here, until that move is known committed. */
  arrivingFrom(server: Server): string | undefined;
  log(line: string): void;
}

export interface MigrateRequest {
  name: string;
  to: string;
  graceMs: number;
}

/** DESIGN §7: what `rpcmig migrate` reports. */
export interface Breakdown {
  quiesce_ms: number;
  snapshot_ms: number;
  copy_ms: number;
  start_ms: number;
  total_ms: number;
  pause_ms: number;
  state_bytes: number;
  program_bytes_sent: number;
  from: string;
  to: string;
  /** Where the moved server listens. */
  address: string;
  /**
   * The pause's two ends, the server's stop and the new host's first reply, on the source
   * host's monotonic clock (ms, `monotonicMs`): a client on that host tells by them which of
   * its calls the move held.
   */
  stopped_at?: number;
  answered_at?: number;
}

export type Step = 'order' | 'prepare' | 'signal' | 'quiesce' | 'snapshot' | 'copy' | 'start' | 'commit';

export interface Move {
  id: string;
  server: Server;
  to: string;
  graceMs: number;
  dir: string;
  statePath: string;
  step: Step;
  over: boolean;
  /** Where the moved server serves, from the commit point on: the move is final. */
  committed?: { address: string; epoch: number };
  /** The first call to the new address after the commit, and when it was answered. */
  probed?: Promise<void>;
  answered?: number;
  /** After the commit point: the forwarding entry is written, the destination told. */
  forwarded?: boolean;
  told?: boolean;
  /** Rejects when the move makes no progress for STALL_MS (see `touch`). */
  stalled: Deferred<never>;
  watchdog?: NodeJS.Timeout;
  link?: DaemonLink;
  received: number;
  orderTaken?: number;
  /** When the server stopped taking calls, as it reported (see `stoppedAt`); the pause counts from here. */
  stopped?: number;
  snapshot: Deferred<SnapshotReport>;
  /** The state file, when the server sent it inline (INLINE_STATE_MAX); else it is at `statePath`. */
  state?: Uint8Array;
  /** What of the state file went while the server wrote it (statecopy.ts); undefined when none did. */
  tailed?: Promise<Tailed | undefined>;
  /** The `state` calls, each in its turn (see `pacedCalls`). */
  stateCalls?: (params: unknown[]) => Promise<unknown>;
  /** The server's control connection closed mid-move (it exited or crashed). */
  gone?: boolean;
  /**
   * The program was named by the id it had at its last move, and the walk of its tree that
   * confirms it ran on past the prepare: true once it confirms, false if the tree changed.
   * The move commits only once it has confirmed.
   */
  confirmed?: Promise<boolean>;
  figures: Breakdown;
  progress: Meter;
}

export const STEP_TIMEOUT_MS = Number(process.env.RPCMIG_STEP_TIMEOUT_MS) || 10_000;
/** The longest call executing when the order comes is waited for this long. */
/**
 * A snapshot up to this size comes in the server's report rather than in a file: creating,
 * writing and renaming a file, then reading it, costs a small state's pause more than the
 * bytes do. A larger one streams to the file, so that the server holds no second copy.
 */
const inlineMax = process.env.RPCMIG_INLINE_STATE_MAX;
export const INLINE_STATE_MAX = inlineMax !== undefined && /^\d+$/.test(inlineMax) ? Number(inlineMax) : 2 ** 20;
export const QUIESCE_TIMEOUT_MS = Number(process.env.RPCMIG_QUIESCE_TIMEOUT_MS) || 20_000;
export const START_TIMEOUT_MS = (Number(process.env.RPCMIG_START_TIMEOUT_MS) || 20_000) + STEP_TIMEOUT_MS;
/**
 * Every wait of a step is bounded by one of the time-outs above; a move that makes no progress
 * for longer than the longest of them, plus a step, is stuck in this daemon itself — and would
 * otherwise hold the server's calls and the operator's `rpcmig migrate` forever.
 */
export const STALL_MS = Math.max(QUIESCE_TIMEOUT_MS, START_TIMEOUT_MS) + STEP_TIMEOUT_MS;
/** How many committed move ids are remembered, for destinations asking how a move ended. */
export const COMMITTED_KEPT = 1024;

/** What `rpcmig migrate` is told of a move that failed: the step, its cause, where the server serves on. */
export function failure(move: Move, error: unknown, source: string): RpcmigError {
  if (error instanceof RpcmigError && error.code === 'MIGRATION_FAILED' && move.step === 'order') return error;
  const cause = error instanceof RpcmigError ? error.code : undefined;
  const message = `${move.step} failed: ${describe(error)}; ${move.server.name} serves on at ${source}`;
  return new RpcmigError('MIGRATION_FAILED', message, { step: move.step, ...(cause ? { cause } : {}) });
}

/** The walk of the program's tree, overlapped with the move, found the program changed: rolled back, and moved again. */
export class ProgramChanged extends Error {
  constructor() {
    super('the program changed since its last move');
  }
}

export function describe(error: unknown): string {
  if (error instanceof RpcmigError) return error.code === 'MIGRATION_FAILED' ? error.message : `${error.code}: ${error.message}`;
  return error instanceof Error ? error.message : String(error);
}

/** The `migrate` request as the CLI sends it, checked: a server's name, a daemon's address, a grace period. */
export function checkMigrate(value: unknown): MigrateRequest {
  const { name, to, graceMs } = (typeof value === 'object' && value !== null ? value : {}) as Record<string, unknown>;
  if (typeof to !== 'string') throw new RpcmigError('BAD_REQUEST', 'migrate needs { name, to: "host:port", graceMs }');
  let where: Address;
  try {
    where = parseAddress(to);
  } catch (error) {
    throw new RpcmigError('BAD_REQUEST', (error as Error).message);
  }
  const grace = graceMs === undefined ? 60_000 : Number(graceMs);
  if (!Number.isFinite(grace) || grace < 0) throw new RpcmigError('BAD_REQUEST', 'graceMs must be a number of milliseconds >= 0');
  return { name: checkName(name), to: formatAddress(where), graceMs: grace };
}

/** Why a server's snapshot report cannot be taken (its own error, or inline bytes that do not match it); undefined when it can. */
export function snapshotFailure(report: SnapshotReport): string | undefined {
  const { state } = report;
  if (state !== undefined && (!(state instanceof Uint8Array) || state.length !== report.bytes || state.length > INLINE_STATE_MAX)) {
    return `the server reported a snapshot of ${report.bytes} bytes and sent ${state instanceof Uint8Array ? state.length : 'no'} bytes`;
  }
  return typeof report.error === 'string' ? report.error : undefined;
}

/** What turns an instant of this process's `performance.now()` clock into one of the host's monotonic clock. */
export function hostClockOffset(): number {
  return monotonicMs() - performance.now();
}

/**
 * When the server stopped taking calls, on this process's `performance.now()` clock: the
 * instant its report gives on the host's monotonic clock, if that lies between the order's
 * taking and now (a server and its daemon share a host, hence that clock); else undefined,
 * and the pause counts from the order's taking, as it does for a runtime that does not say.
 */
export function stoppedAt(report: SnapshotReport, orderTaken: number | undefined): number | undefined {
  const stopped = (report.stopped_at ?? Number.NaN) - hostClockOffset();
  return orderTaken !== undefined && stopped >= orderTaken && stopped <= performance.now() ? stopped : undefined;
}

/**
 * Connects to the moved server and waits for its answer: the paper's "reply from the new host".
 * The question is idempotent, so it goes without a client id: the new server keeps no
 * completion record of it, which would travel in its state files until its lease ran out.
 */
export async function firstReply(address: string): Promise<void> {
  const where = parseAddress(address, 0);
  const client = await connect<Record<string, () => unknown>>({ host: where.host, port: where.port, timeout: STEP_TIMEOUT_MS, exactlyOnce: false });
  try {
    await invoke(client, WHEREIS);
  } finally {
    void client.close();
  }
}

/**
 * The old server exits when its grace period is over; one that is still registered a step
 * later is stuck, and is ended: its state lives at the destination now.
 */
export function retireLater({ id, server, graceMs }: Move, ctx: Pick<SourceContext, 'names' | 'log'>): void {
  setTimeout(() => {
    if (!ctx.names.all().includes(server)) return;
    ctx.log(`migration ${id}: ${server.name} (pid ${server.pid}) did not exit ${graceMs} ms after its commit; ending it`);
    try {
      process.kill(server.pid, 'SIGKILL');
    } catch {
      // it exited meanwhile
    }
  }, graceMs + STEP_TIMEOUT_MS).unref();
}

/** The move made progress: the watchdog starts again. */
export function touch(move: Move): void {
  clearTimeout(move.watchdog);
  if (move.over) return;
  const stuck = () => new Error(`the move made no progress for ${STALL_MS} ms`);
  move.watchdog = setTimeout(() => move.stalled.reject(stuck()), STALL_MS);
}

/** A call to the move's destination daemon, answered within `timeout`. */
export function callPeer(move: Move, method: string, params: unknown[], timeout = STEP_TIMEOUT_MS): Promise<unknown> {
  return answered(move, method, move.link!.call(method, params), timeout);
}

/** The destination's answer within `timeout`; an answer, or its absence, is progress for the watchdog. */
function answered(move: Move, method: string, answer: Promise<unknown>, timeout = STEP_TIMEOUT_MS): Promise<unknown> {
  const late = () => new Error(`the daemon at ${move.to} did not answer ${method} within ${timeout} ms`);
  return within(timeout, answer, late).finally(() => touch(move));
}

/**
 * For calls sent in a window (pieces of the program or the state): each has the step time-out
 * from the answer to the one before it, not from its send. Queued behind the others on a slow
 * link, a piece would otherwise time out while the destination answers every piece it gets.
 */
export function pacedCalls(move: Move, method: string): (params: unknown[]) => Promise<unknown> {
  let previous: Promise<unknown> = Promise.resolve();
  return (params) => {
    const answer = move.link!.call(method, params);
    answer.catch(() => undefined); // handled once its turn comes
    const turn = previous.then(() => answered(move, method, answer));
    previous = turn.catch(() => undefined);
    return turn;
  };
}

/**
 * Sends pieces of the state file to the destination, in order with every other piece of the
 * move; the `copy.send` failpoint applies to each. `onFinal` runs once the last piece is on
 * the link, before its answer.
 */
export function stateSender(move: Move, log: (line: string) => void, onFinal: () => void = () => undefined): SendPiece {
  const state = (move.stateCalls ??= pacedCalls(move, 'state'));
  return async (offset, bytes, final) => {
    const fault = await failpoint('copy.send', log);
    if (fault === 'drop') move.link!.close();
    if (fault === 'corrupt') bytes[bytes.length >> 1] ^= 0xff;
    const answered = state([move.id, offset, bytes, final]);
    if (final) onFinal();
    await answered;
  };
}
