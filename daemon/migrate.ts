// The migration coordinator on the source daemon (DESIGN §3): one function per step — order,
// prepare, signal, (the server's quiesce and snapshot), copy, start, commit — and abort in
// one place. The program is shipped before the signal, so the server pauses only for its
// state. Until the old server is told to commit nothing is final: any failure rolls back.
import { randomBytes } from 'node:crypto';
import { mkdir, realpath, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { openDaemon, within } from '../runtime/daemonlink.js';
import { RpcmigError } from '../runtime/errors.js';
import type { Order, SnapshotReport } from '../runtime/migrating.js';
import { deferred, type Deferred } from './deferred.js';
import { failpoint, type Failpoint } from '../runtime/failpoints.js';
import { writeOrder } from './recover.js';
import type { Server } from './names.js';
import { sendBlobs, type Manifest, type Placed } from './transfer.js';
import { shipmentOf } from './programs.js';
import { isFileEntry } from './validate.js';
import type { ShipmentHead } from './shipment.js';
import { Meter, type Progress } from './progress.js';
import { sendRest, tailSnapshot, type SendPiece } from './statecopy.js';
import { temporaryOf } from '../runtime/statefile.js';
import {
  callPeer, COMMITTED_KEPT, describe, failure, firstReply, INLINE_STATE_MAX, pacedCalls, ProgramChanged, QUIESCE_TIMEOUT_MS, hostClockOffset, retireLater, snapshotFailure, START_TIMEOUT_MS, stateSender, STEP_TIMEOUT_MS, stoppedAt, touch, type Breakdown, type MigrateRequest, type Move, type SourceContext, type Step,
} from './move.js';

export class Coordinator {
  private readonly moves = new Map<Server, Move>();
  /** Moves this daemon committed, newest last (the forwarding entries keep them across restarts). */
  private readonly committed = new Set<string>();

  constructor(private readonly ctx: SourceContext) {}

  /**
   * The `migrate` method: runs every step; on failure rolls back and throws MIGRATION_FAILED.
   * A move rolled back because its program changed while it ran goes again, once, with the
   * program as it is now.
   */
  async migrate(request: MigrateRequest, report: (progress: Progress) => void = () => undefined): Promise<Breakdown> {
    try {
      return await this.attempt(request, report, true);
    } catch (error) {
      if (!(error instanceof ProgramChanged)) throw error;
      this.ctx.log(`${request.name}'s program changed while it moved; moving it again`);
      return this.attempt(request, report, false);
    }
  }

  private async attempt(request: MigrateRequest, report: (progress: Progress) => void, again: boolean): Promise<Breakdown> {
    const move = this.order(request, report);
    try {
      return await Promise.race([this.steps(move), move.stalled.promise]);
    } catch (error) {
      // Past the commit point the move is final whatever failed: it is finished, not undone.
      if (move.committed) return await this.finish(move);
      await this.abort(move, error);
      if (error instanceof ProgramChanged && again) throw error;
      throw failure(move, error, this.ctx.advertised);
    } finally {
      clearTimeout(move.watchdog);
      move.over = true;
      this.moves.delete(move.server);
      move.link?.close();
      // After the reply: the operator does not wait for the spool.
      setImmediate(() => void this.cleanup(move).catch((error: Error) => this.ctx.log(`migration ${move.id}: cleanup failed: ${error.message}`)));
    }
  }

  private async steps(move: Move): Promise<Breakdown> {
    await this.at(move, 'order.after');
    await this.prepare(move);
    await this.at(move, 'prepare.after');
    await this.signal(move);
    await this.at(move, 'signal.after');
    // The start goes right behind the state, without waiting for the state's answer: the
    // destination takes them in order. A failed copy is reported as the copy's failure.
    const sent = deferred<void>();
    const copied = this.copy(move, sent);
    copied.catch(() => undefined);
    await Promise.race([sent.promise, copied]);
    await this.at(move, 'copy.after');
    const starting = this.start(move);
    starting.catch(() => undefined);
    await copied.catch((error: unknown) => {
      move.step = 'copy';
      throw error;
    });
    const arrived = await starting;
    await this.at(move, 'start.after');
    await this.commit(move, arrived);
    return this.finish(move);
  }

  /** A failpoint between steps; a move that ended meanwhile (the watchdog gave up on it) goes no further. */
  private async at(move: Move, point: Failpoint): Promise<void> {
    await failpoint(point, this.ctx.log);
    if (move.over) throw new Error(`the move ended while it was stuck at ${point}`);
  }

  /** Enters a step: progress, as far as the watchdog is concerned. */
  private enter(move: Move, step: Step): void {
    if (move.over) throw new Error(`the move ended before ${step}`);
    move.step = step;
    touch(move);
  }

  /** Step 7 at the source: the move's order and state file go. */
  private async cleanup(move: Move): Promise<void> {
    await failpoint('cleanup.before', this.ctx.log);
    await rm(move.dir, { recursive: true, force: true });
  }

  /** Moves under way from here. */
  get underway(): number {
    return this.moves.size;
  }

  /** How the move `id` stands here: under way, or committed by this daemon process. */
  outcome(id: string): 'pending' | 'committed' | undefined {
    if (this.committed.has(id)) return 'committed';
    return [...this.moves.values()].some((move) => move.id === id) ? 'pending' : undefined;
  }

  /** The `order` method: a signalled server asks what for. */
  orderFor(server: Server | undefined): Order | null {
    const move = server && this.moves.get(server);
    if (!move || move.over || move.step !== 'signal') return null;
    move.step = 'quiesce';
    move.orderTaken = performance.now();
    return { id: move.id, statePath: move.statePath, inline: INLINE_STATE_MAX };
  }

  /** The `snapshot` method: the server reports its snapshot written, or failed. */
  snapshotted(server: Server | undefined, value: unknown): void {
    const move = server && this.moves.get(server);
    const report = value as SnapshotReport | null;
    if (!move || report?.id !== move.id) throw new RpcmigError('BAD_REQUEST', 'no migration of this server awaits that snapshot');
    const failed = snapshotFailure(report);
    if (failed === undefined) move.snapshot.resolve(report);
    else move.snapshot.reject(new Error(failed));
  }

  /** The server's control connection closed mid-move. */
  serverGone(server: Server): void {
    const move = this.moves.get(server);
    if (!move) return;
    move.gone = true;
    move.snapshot.reject(new Error(`the server (pid ${server.pid}) went away`));
  }

  private order(request: MigrateRequest, report: (progress: Progress) => void): Move {
    const server = this.ctx.names.lookup(request.name);
    // Moved on before its source committed, it would live twice should that source roll back.
    const from = this.ctx.arrivingFrom(server);
    if (from !== undefined) throw new RpcmigError('MIGRATION_FAILED', `order refused: ${server.name} is still arriving from ${from}`, { step: 'order' });
    if (server.state !== 'serving' || this.moves.has(server)) {
      const why = server.state === 'moved' ? 'moved away already' : server.state === 'arriving' ? 'still arriving here' : 'already migrating';
      throw new RpcmigError('MIGRATION_FAILED', `order refused: ${server.name} is ${why}`, { step: 'order' });
    }
    const id = randomBytes(8).toString('hex');
    const dir = join(this.ctx.spool, 'leaving', id);
    const figures: Breakdown = {
      quiesce_ms: 0, snapshot_ms: 0, copy_ms: 0, start_ms: 0, total_ms: 0, pause_ms: 0,
      state_bytes: 0, program_bytes_sent: 0, from: this.ctx.advertised, to: request.to, address: '',
    };
    const move: Move = {
      id, server, to: request.to, graceMs: request.graceMs, dir, statePath: join(dir, 'state'),
      step: 'order', over: false, received: performance.now(), snapshot: deferred(), stalled: deferred(), figures, progress: new Meter(report),
    };
    // Nobody may be waiting on it when the move is over: its rejection is handled here.
    move.stalled.promise.catch(() => undefined);
    touch(move);
    this.moves.set(server, move);
    server.state = 'migrating';
    this.ctx.log(`migration ${id}: ${server.name} to ${request.to}: order`);
    return move;
  }

  /**
   * Step 2: the destination gets the program's manifest and the blobs it lacks, and starts
   * the program's standby, so that Node's start-up overlaps the quiesce. The walk of the
   * program's tree starts at once; for a program this daemon shipped before, the id it had
   * goes out without waiting for the walk, and the standby starts while the walk confirms it.
   * A walk still running once the standby is ready — a large tree — runs on beside the
   * signal, the snapshot and the start (if the last walk of that tree was short: the commit
   * waits for it), so that a cached program costs a move what a small one does.
   */
  private async prepare(move: Move): Promise<void> {
    this.enter(move, 'prepare');
    const root = await realpath(move.server.root);
    const walk = this.ctx.programs.walk(root);
    const { guess, walked } = walk;
    await this.greet(move);
    const shipment = await shipmentOf(move.id, move.server, root, this.ctx.advertised);
    if (guess !== undefined && (await this.offer(move, { ...shipment, program: guess }))) {
      // The old program may fail to start where the changed one would (a package it lacked): the walk decides.
      const failed = await callPeer(move, 'prestart', [move.id], START_TIMEOUT_MS).then(() => undefined, (error: unknown) => ({ error }));
      if (failed === undefined && walk.id === undefined && walk.mayOverlap) {
        move.confirmed = walked.then(({ id }) => id === guess);
        move.confirmed.catch(() => undefined);
        return;
      }
      const { id } = await walked;
      if (id === guess && failed !== undefined) throw failed.error;
      if (id === guess) return;
      // The tree changed since its last move: what the destination prepared is of the old program.
      await callPeer(move, 'abort', [move.id, 'the program changed since its last move']);
      this.ctx.log(`migration ${move.id}: ${move.server.name}'s program changed since its last move; shipping it again`);
    }
    const { manifest, id, above } = await walked;
    // A right guess that the destination did not know needs no second asking.
    if (id === guess || !(await this.offer(move, { ...shipment, program: id }))) {
      const started = performance.now();
      const { lacking } = (await callPeer(move, 'prepare', [{ ...shipment, program: id, manifest }])) as { lacking: string[] };
      move.figures.program_bytes_sent = await this.ship(move, root, manifest, lacking, above);
      move.figures.copy_ms += performance.now() - started;
    }
    await callPeer(move, 'prestart', [move.id], START_TIMEOUT_MS);
  }

  /** Connects to the destination, which must be another daemon than this one. */
  private async greet(move: Move): Promise<void> {
    move.link = await openDaemon(move.to, this.ctx.key, { timeout: STEP_TIMEOUT_MS });
    const hello = (await callPeer(move, 'hello', [])) as { id?: unknown };
    if (hello?.id === this.ctx.daemonId) {
      move.step = 'order';
      throw new Error(`${move.server.name} already lives on the daemon at ${move.to}`);
    }
  }

  /** The program's id alone: true when the destination has its tree, and the manifest need not travel. */
  private async offer(move: Move, shipment: ShipmentHead & { program: string }): Promise<boolean> {
    const started = performance.now();
    const { known } = (await callPeer(move, 'prepare', [shipment])) as { known?: boolean };
    move.figures.copy_ms += performance.now() - started;
    return known === true;
  }

  private ship(move: Move, root: string, manifest: Manifest, lacking: string[], placed: Placed): Promise<number> {
    const wanted = new Set(lacking);
    const total = manifest.entries.reduce((sum, e) => sum + (isFileEntry(e) && wanted.delete(e.hash) ? e.size : 0), 0);
    move.progress.begin('prepare', total);
    const blob = pacedCalls(move, 'blob');
    return sendBlobs(root, manifest, lacking, async (pieces) => {
      await blob([move.id, pieces]);
      move.progress.add(pieces.reduce((sum, [, , bytes]) => sum + bytes.length, 0));
    }, { placed });
  }

  /** Step 3: SIGUSR2; the server takes the order, quiesces, writes its snapshot and reports. */
  private async signal(move: Move): Promise<void> {
    this.enter(move, 'signal');
    await mkdir(move.dir, { recursive: true, mode: 0o700 });
    // Written before the signal: a daemon that restarts mid-move knows whom to ask how it ended.
    writeOrder(move.dir, { id: move.id, name: move.server.name, to: move.to, graceMs: move.graceMs });
    process.kill(move.server.pid, 'SIGUSR2');
    // A large snapshot starts for the destination while the server writes it.
    move.tailed = tailSnapshot(temporaryOf(move.statePath, move.server.pid), stateSender(move, this.ctx.log), move.snapshot.promise, () => move.over);
    move.tailed.catch(() => undefined);
    const report = await within(QUIESCE_TIMEOUT_MS, move.snapshot.promise, () => new Error(move.step === 'signal'
      ? `the server (pid ${move.server.pid}) did not take the order within ${QUIESCE_TIMEOUT_MS} ms`
      : `the server did not finish its calls and snapshot within ${QUIESCE_TIMEOUT_MS} ms`)).catch((error: Error) => this.orphanedSnapshot(move, error));
    move.figures.quiesce_ms = report.quiesce_ms ?? 0;
    move.figures.snapshot_ms = report.snapshot_ms ?? 0;
    move.figures.state_bytes = report.bytes ?? 0;
    move.state = report.state;
    move.stopped = stoppedAt(report, move.orderTaken);
  }

  /**
   * The server went away before it reported its snapshot. The snapshot is renamed into place
   * only once whole, after the server quiesced: if it is there, it holds every call the server
   * ran, and the move goes on with it — the state survives its process. If not, the state
   * died with the process and the move fails.
   */
  private async orphanedSnapshot(move: Move, error: Error): Promise<SnapshotReport> {
    const bytes = move.gone ? await stat(move.statePath).then((st) => st.size, () => undefined) : undefined;
    if (bytes === undefined) throw error;
    this.ctx.log(`migration ${move.id}: ${move.server.name} (pid ${move.server.pid}) went away after writing its snapshot; moving the snapshot`);
    return { id: move.id, bytes };
  }

  /** Step 5a: the state file to the destination; `sent` resolves once its last piece is on the link. */
  private async copy(move: Move, sent: Deferred<void>): Promise<void> {
    this.enter(move, 'copy');
    const started = performance.now();
    move.progress.begin('copy', move.figures.state_bytes);
    const send = stateSender(move, this.ctx.log, () => sent.resolve());
    const piece: SendPiece = (offset, bytes, final) => send(offset, bytes, final).then(() => move.progress.add(bytes.length));
    if (move.state) await piece(0, move.state, true);
    else {
      const tailed = await move.tailed;
      const early = tailed ? tailed.sent - tailed.held : 0;
      move.progress.add(early);
      const size = await sendRest(move.statePath, tailed, piece);
      if (tailed) this.ctx.log(`migration ${move.id}: ${early} of the state's ${size} bytes went while the server wrote them`);
    }
    move.figures.copy_ms += performance.now() - started;
  }

  /** Step 5b: the destination starts the program, which restores and registers there. */
  private async start(move: Move): Promise<{ address: string; epoch: number }> {
    this.enter(move, 'start');
    const started = performance.now();
    const arrived = (await callPeer(move, 'start', [move.id], START_TIMEOUT_MS)) as { address: string; epoch?: number };
    move.figures.start_ms = performance.now() - started;
    return { address: arrived.address, epoch: arrived.epoch ?? 0 };
  }

  /**
   * Step 6: the old server is told to answer MOVED (held calls first) for its grace period,
   * which makes the move final; the forwarding entry follows, then the destination's word.
   */
  private async commit(move: Move, arrived: { address: string; epoch: number }): Promise<void> {
    this.enter(move, 'commit');
    const { server } = move;
    // What the destination runs must be the program as it is: a walk still running confirms it first.
    if (move.confirmed && !(await move.confirmed)) throw new ProgramChanged();
    await this.at(move, 'commit.before');
    // The commit point: from this notification on, the held calls go to the new server.
    server.state = 'moved';
    this.ctx.notify(server, 'commit', [{ id: move.id, to: arrived.address, grace_ms: move.graceMs }]);
    move.committed = arrived;
    this.committed.add(move.id);
    if (this.committed.size > COMMITTED_KEPT) this.committed.delete(this.committed.values().next().value!);
    retireLater(move, this.ctx);
    // The clock stops at the new host's first reply: asked now, it is not held up by the save below.
    this.probe(move);
    await failpoint('commit.after', this.ctx.log);
    await this.forward(move);
    await failpoint('forward.after', this.ctx.log);
    this.tellDestination(move);
  }

  /** The forwarding entry (once: by the steps, or by `finish` if they got stuck), on disk when it resolves. */
  private async forward(move: Move): Promise<void> {
    if (move.forwarded) return;
    move.forwarded = true;
    const { server, committed } = move;
    await this.ctx.forwards.set({ name: server.name, to: committed!.address, daemon: move.to, epoch: committed!.epoch, id: move.id }).catch((error: Error) => {
      this.ctx.log(`migration ${move.id}: ${server.name} moved, but its forwarding entry was not saved: ${error.message}`);
    });
  }

  /** The first call to the new address (once), which ends the move's clock. */
  private probe(move: Move): Promise<void> {
    const { address } = move.committed!;
    move.probed ??= firstReply(address).then(
      () => void (move.answered = performance.now()),
      (error: Error) => this.ctx.log(`migration ${move.id}: no first reply from ${address}: ${error.message}`),
    );
    return move.probed;
  }

  /** The destination hears of the commit (once); a destination that does not asks later (`outcome`). */
  private tellDestination(move: Move): void {
    if (move.told) return;
    move.told = true;
    callPeer(move, 'commit', [move.id]).catch((error: Error) => this.ctx.log(`migration ${move.id}: the destination did not take the commit: ${error.message}`));
  }

  /** After the commit point: what the steps left undone, then the first reply from the new address ends the clock. */
  private async finish(move: Move): Promise<Breakdown> {
    const { address } = move.committed!;
    await this.forward(move);
    this.tellDestination(move);
    await this.probe(move);
    const now = move.answered ?? performance.now();
    move.figures.total_ms = now - move.received;
    const stopped = move.stopped ?? move.orderTaken ?? now;
    move.figures.pause_ms = now - stopped;
    const offset = hostClockOffset();
    move.figures.stopped_at = stopped + offset;
    move.figures.answered_at = now + offset;
    move.figures.address = address;
    this.ctx.log(`migration ${move.id}: ${move.server.name} moved to ${address} in ${move.figures.total_ms.toFixed(1)} ms`);
    return move.figures;
  }

  /** Step 8: before commit, every failure lands here; the source serves on with its state. */
  private async abort(move: Move, error: unknown): Promise<void> {
    if (move.over) return;
    move.over = true;
    const reason = error instanceof ProgramChanged ? error.message : `${move.step} failed: ${describe(error)}`;
    const { server } = move;
    if (move.orderTaken !== undefined) this.ctx.notify(server, 'abort', [{ id: move.id, reason }]);
    if (server.state === 'migrating') server.state = 'serving';
    if (move.link) await within(2000, move.link.call('abort', [move.id, reason])).catch(() => undefined);
    this.ctx.log(`migration ${move.id}: aborted: ${reason}`);
  }
}
