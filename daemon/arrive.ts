// The destination's half of a migration (DESIGN §3 steps 2 and 5): it takes the manifest,
// the blobs its cache lacks and the state file, materialises the program, starts it with
// RPCMIG_RESTORE and answers once the restored server has registered here. A move it did not
// hear the end of is settled by asking its source (settle.ts).
import { mkdir, rm, stat } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { within } from '../runtime/daemonlink.js';
import { failpoint } from '../runtime/failpoints.js';
import { ARRIVAL_ENV } from '../runtime/register.js';
import { writeStateFile as writeRecordFile } from '../runtime/statefile.js';
import { RpcmigError } from '../runtime/errors.js';
import { STANDBY_ENV } from '../runtime/state.js';
import { deferred, type Deferred } from './deferred.js';
import { kill, lastWords, launch, standbyScript, type Launch, type Launched, type Spares } from './launch.js';
import type { Server } from './names.js';
import { ARRIVAL_RECORD_FILE, checkShipment, marksOf, refuseMigration, StateWriter, type ArrivalRecord, type Shipment } from './shipment.js';
import { Settlement } from './settle.js';
import { exists, placeProgram, programDir } from './materialize.js';
import { BlobReceiver, BlobStore, copyHere, type Manifest } from './transfer.js';

export interface ArrivalContext {
  spool: string;
  key: Buffer;
  store: BlobStore;
  /** Node processes started ahead of moves, in which standbys start. */
  spares: Spares;
  /** What the started server is told: its daemon, the key file, the host to listen on. */
  serverEnv: Record<string, string>;
  /** True when a server of that name serves here (not one in its grace period). */
  serves(name: string): boolean;
  /** The source committed the move: the server it brought here, held as `arriving`, serves. */
  confirm(name: string, id: string): void;
  /** The source rolled the move back: the server it brought here is unregistered (and ended). */
  evict(name: string, id: string): void;
  /** A program's tree was built at `root` from the store's verified blobs. */
  built(root: string, manifest: Manifest, program: string): void;
  /** Files of this host's own program trees that had these hashes (Programs.filesOf). */
  filesOf(hashes: string[]): Promise<Map<string, string>>;
  log(line: string): void;
}

type Phase = 'receiving' | 'starting' | 'started';

/** Where the started server serves, and its epoch. */
type Arrived = { address: string; epoch: number };

interface Arrival extends Shipment {
  peer: object;
  phase: Phase;
  dir: string;
  receiver: BlobReceiver;
  state: StateWriter;
  pid?: number;
  /** The spare the standby started in (see ArrivalRecord). */
  spare?: string;
  /** Where the started server serves, once it does. */
  arrived?: Arrived;
  /** The process started ahead of the state: ready once it called `standby`, at its gate once the program waits for its state. */
  standby?: { launched: Launched; log: string; called: Deferred<void>; atGate: Deferred<void> };
  /** Settles once the last piece of the state is handled (written, or refused). */
  stateWritten?: Promise<void>;
  /** Until the start, drops the arrival if the source goes silent (see SILENCE_MS). */
  silence?: NodeJS.Timeout;
}

/** How long a started server has to restore and register. */
const START_TIMEOUT_MS = Number(process.env.RPCMIG_START_TIMEOUT_MS) || 20_000;
/** How long after its commit the spare a move took is replaced. */
const SPARE_AFTER_COMMIT_MS = 25;
/** How long the prestart waits for a ready standby to load the program up to its first read of the state. */
const GATE_WAIT_MS = 1000;
/** A started server whose commit has not come after this long: the source is asked. */
const SETTLE_AFTER_MS = Number(process.env.RPCMIG_SETTLE_AFTER_MS) || 30_000;
/**
 * The longest a source waits before it gives up on a move and aborts it: its quiesce time-out
 * and a step. Heard from no more before the start, its abort was lost (a partition): the
 * arrival is dropped, rather than held until TCP notices the connection is dead.
 */
const SILENCE_MS = (Number(process.env.RPCMIG_QUIESCE_TIMEOUT_MS) || 20_000) + (Number(process.env.RPCMIG_STEP_TIMEOUT_MS) || 10_000);

export class Arrivals {
  private readonly arrivals = new Map<string, Arrival>();
  /** Servers started here and not registered yet, by name. */
  private readonly awaited = new Map<string, { pid: number; registered(arrived: Arrived): void }>();
  /** Moves this daemon did not hear the end of, settled by asking their sources. */
  private readonly settlement: Settlement;

  constructor(private readonly ctx: ArrivalContext) {
    this.settlement = new Settlement(ctx);
  }

  /** Moves under way to here. */
  get underway(): number {
    return this.arrivals.size;
  }

  /**
   * Takes a migration's shipment. Sent first with the program's id alone: a destination that
   * has the program's tree answers `known`, and the manifest never travels; otherwise the
   * source sends it again with the manifest, and learns which blobs are lacking.
   */
  async prepare(peer: object, value: unknown): Promise<{ known: boolean; lacking: string[] }> {
    const shipment = checkShipment(value);
    const tree = programDir(this.ctx.spool, shipment.program);
    const have = await exists(tree);
    if (shipment.byId) {
      if (!have) return { known: false, lacking: [] };
      if (!(await stat(join(tree, shipment.entry)).then((st) => st.isFile(), () => false))) {
        throw refuseMigration(`the entry ${shipment.entry} is not a file of the program`);
      }
    }
    if (this.arrivals.has(shipment.id)) throw refuseMigration(`migration ${shipment.id} is already under way here`);
    const arriving = [...this.arrivals.values()].some((a) => a.name === shipment.name) || this.settlement.holds(shipment.name);
    if (this.ctx.serves(shipment.name) || arriving) {
      throw new RpcmigError('NAME_TAKEN', `a server named ${JSON.stringify(shipment.name)} already serves or arrives here`);
    }
    const dir = join(this.ctx.spool, 'arriving', shipment.id);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const arrival: Arrival = {
      ...shipment, peer, phase: 'receiving', dir,
      receiver: new BlobReceiver(this.ctx.store, shipment.manifest),
      state: new StateWriter(join(dir, 'state')),
    };
    this.arrivals.set(shipment.id, arrival);
    this.watch(arrival);
    this.record(arrival);
    this.ctx.log(`migration ${shipment.id}: receiving ${shipment.name} (program ${shipment.program.slice(0, 12)}${have ? ', in place' : ''})`);
    // A program materialised here before needs no blob: its tree is already in place.
    if (have) return { known: true, lacking: [] };
    const missing = await this.ctx.store.missing(shipment.manifest);
    const started = performance.now();
    const lacking = await copyHere(this.ctx.store, shipment.manifest, missing, await this.ctx.filesOf(missing));
    const copied = missing.length - lacking.length;
    if (copied > 0) this.ctx.log(`migration ${shipment.id}: ${copied} of the ${missing.length} files lacking copied from this host's own program trees in ${(performance.now() - started).toFixed(1)} ms`);
    return { known: true, lacking };
  }

  /** A batch of pieces of the program's blobs: `[id, [[hash, offset, bytes, final], ...]]`. */
  blob(params: unknown[]): Promise<number> {
    const [id, pieces] = params;
    const isPiece = (piece: unknown): piece is Parameters<BlobReceiver['receive']>[0][number] => Array.isArray(piece) && piece.length === 4 && typeof piece[0] === 'string'
      && Number.isSafeInteger(piece[1]) && piece[2] instanceof Uint8Array && typeof piece[3] === 'boolean';
    if (params.length !== 2 || !Array.isArray(pieces) || !pieces.every(isPiece)) {
      throw new RpcmigError('BAD_REQUEST', 'blob takes [id, [[hash, offset, bytes, final], ...]]');
    }
    return this.receiving(id).receiver.receive(pieces);
  }

  async state(params: unknown[]): Promise<void> {
    const [id, offset, bytes, final] = params;
    if (!Number.isSafeInteger(offset) || !(bytes instanceof Uint8Array) || typeof final !== 'boolean') {
      throw new RpcmigError('BAD_REQUEST', 'state takes [id, offset, bytes, final]');
    }
    const arrival = this.receiving(id);
    const written = (async () => {
      await arrival.state.write(offset as number, bytes, final);
      if (final) await failpoint('arrive.copy.after', this.ctx.log);
    })();
    // The source sends the start right behind the last piece: the start waits for it here.
    if (final) arrival.stateWritten = written.catch(() => undefined);
    await written;
  }

  /**
   * Step 2's head start: the program is in place, so its standby starts now (see
   * runtime/standby.ts): it loads the program, whose first read of its state waits for the
   * word on its standard input that the state file is whole. Resolves once the standby is
   * ready. A program whose rpcmig has no standby bootstrap is started cold at the start step.
   */
  async prestart(id: unknown): Promise<{ standby: boolean }> {
    const arrival = this.receiving(id);
    if (arrival.standby) return { standby: true };
    const program = await this.program(arrival);
    const bootstrap = standbyScript(join(program, arrival.entry));
    if (bootstrap === undefined) return { standby: false };
    const log = await this.logFile(arrival);
    // An abort taken while the tree was built removed the arrival: nothing may start for it.
    if (this.arrivals.get(arrival.id) !== arrival) throw refuseMigration(`migration ${arrival.id} was aborted before its standby started`);
    const spec: Launch = {
      program, entry: relative(program, bootstrap), cwd: arrival.cwd, argv: [join(program, arrival.entry), ...arrival.argv],
      execArgv: arrival.execArgv, log, env: { ...this.ctx.serverEnv, [STANDBY_ENV]: arrival.id, [ARRIVAL_ENV]: arrival.id }, pipe: true,
    };
    const spare = this.ctx.spares.take(spec, `rpcmig move ${arrival.id}: ${arrival.name}`);
    const launched = spare ?? launch(spec);
    arrival.pid = launched.pid;
    arrival.spare = spare?.token;
    this.record(arrival);
    const standby = { launched, log, called: deferred<void>(), atGate: deferred<void>() };
    arrival.standby = standby;
    this.ctx.log(`migration ${arrival.id}: standby for ${arrival.name} pid ${launched.pid}${spare ? ' (a spare)' : ''} (log ${log})`);
    // Ready before the source is signalled, so that its start-up is not part of the pause.
    const died = launched.exited.then((how) => Promise.reject(refuseMigration(`the standby ${how}${lastWords(log)}`)));
    const late = () => refuseMigration(`the standby was not ready within ${START_TIMEOUT_MS} ms${lastWords(log)}`);
    await within(START_TIMEOUT_MS, Promise.race([standby.called.promise, died]), late);
    // Loading the program's modules is not part of the pause either, unless it takes long:
    // a program may do other work before it first reads its state.
    await within(GATE_WAIT_MS, Promise.race([standby.atGate.promise, died])).catch(() => undefined);
    this.watch(arrival);
    return { standby: true };
  }

  /** The `standby` method: a standby process is ready, and learns where its state file will be. */
  standing(id: unknown): { statePath: string } {
    const arrival = this.arrivals.get(String(id));
    if (!arrival?.standby) throw refuseMigration(`no standby awaited for migration ${JSON.stringify(id)}`);
    arrival.standby.called.resolve();
    return { statePath: arrival.state.path };
  }

  /** The `gate` method: the standby loaded the program, which waits for its state. */
  gate(id: unknown): void {
    const arrival = this.arrivals.get(String(id));
    if (!arrival?.standby) return;
    arrival.standby.atGate.resolve();
    this.ctx.log(`migration ${arrival.id}: the standby loaded ${arrival.name}, which waits for its state`);
  }

  /** Starts the restored server (hands the state to the standby, or starts cold); waits until it registered. */
  async start(id: unknown): Promise<Arrived & { pid: number }> {
    const arrival = this.receiving(id);
    await arrival.stateWritten;
    // The state's answer leaves before anything the start does: what fails from here is the start.
    await new Promise<void>((resolve) => setImmediate(resolve));
    if (!arrival.state.complete) throw refuseMigration('the state file has not arrived whole');
    await failpoint('arrive.start.before', this.ctx.log);
    if (this.arrivals.get(arrival.id) !== arrival) throw refuseMigration(`migration ${arrival.id} was aborted before its start`);
    arrival.phase = 'starting';
    const registered = new Promise<Arrived>((resolve) => this.awaited.set(arrival.name, { pid: 0, registered: resolve }));
    let started: Launched | undefined;
    try {
      const { launched, log } = arrival.standby ?? await this.coldStart(arrival);
      started = launched;
      this.awaited.get(arrival.name)!.pid = launched.pid;
      const died = launched.exited.then((how) => Promise.reject(refuseMigration(`the server ${how} before it served${lastWords(log)}`)));
      const late = () => refuseMigration(`the server did not serve within ${START_TIMEOUT_MS} ms${lastWords(log)}`);
      const serving = (async () => {
        if (arrival.standby) {
          await Promise.race([arrival.standby.called.promise, died]);
          // The state file is whole: the standby's first read of its state goes on.
          arrival.standby.launched.stdin?.end('go\n');
        }
        return Promise.race([registered, died]);
      })();
      const arrived = await within(START_TIMEOUT_MS, serving, late);
      arrival.phase = 'started';
      arrival.arrived = arrived;
      await failpoint('arrive.start.after', this.ctx.log);
      // Removed after the reply: the source's clients are waiting for it. The record stays until the commit.
      setImmediate(() => rm(arrival.state.path, { force: true }).catch((error: Error) => this.ctx.log(`could not remove ${arrival.state.path}: ${error.message}`)));
      setTimeout(() => this.unheard(arrival), SETTLE_AFTER_MS).unref();
      return { ...arrived, pid: launched.pid };
    } catch (error) {
      if (started) kill(started.pid);
      throw error;
    } finally {
      this.awaited.delete(arrival.name);
      // Failed, the move is over: the next spare may start. Started, it waits for the commit.
      if (arrival.spare !== undefined && arrival.phase !== 'started') setImmediate(() => this.ctx.spares.fill());
    }
  }

  private async coldStart(arrival: Arrival): Promise<{ launched: Launched; log: string }> {
    const program = await this.program(arrival);
    const log = await this.logFile(arrival);
    const launched = launch({
      program, entry: arrival.entry, cwd: arrival.cwd, argv: arrival.argv, execArgv: arrival.execArgv, log,
      env: { ...this.ctx.serverEnv, RPCMIG_RESTORE: arrival.state.path, [ARRIVAL_ENV]: arrival.id },
    });
    arrival.pid = launched.pid;
    this.record(arrival);
    this.ctx.log(`migration ${arrival.id}: started ${arrival.name} pid ${launched.pid} (log ${log})`);
    return { launched, log };
  }

  private async logFile(arrival: Arrival): Promise<string> {
    await mkdir(join(this.ctx.spool, 'logs'), { recursive: true, mode: 0o700 });
    return join(this.ctx.spool, 'logs', `${arrival.name}-${arrival.id}.log`);
  }

  /** Called for every registration: the server a migration started has arrived. */
  registered(server: Server, address: string): void {
    const awaited = this.awaited.get(server.name);
    if (awaited && awaited.pid === server.pid) awaited.registered({ address, epoch: server.epoch ?? 0 });
  }

  /** The `status` method: what this host knows of a move, for a source daemon that restarted. */
  status(id: unknown): { phase: Phase | 'unknown'; address?: string; epoch?: number } {
    const arrival = this.arrivals.get(String(id));
    return arrival ? { phase: arrival.phase, ...arrival.arrived } : { phase: 'unknown' };
  }

  /** The source recorded the move: the started server is this host's now. */
  async commit(id: unknown): Promise<void> {
    const arrival = this.arrivals.get(String(id));
    if (arrival?.phase !== 'started') throw refuseMigration(`no started migration ${JSON.stringify(id)} here`);
    await failpoint('arrive.commit.before', this.ctx.log);
    this.arrivals.delete(arrival.id);
    this.ctx.confirm(arrival.name, arrival.id);
    // The clients the commit released reach the new server now: a Node starting would slow them.
    if (arrival.spare !== undefined) setTimeout(() => this.ctx.spares.fill(), SPARE_AFTER_COMMIT_MS).unref();
    await failpoint('arrive.cleanup.before', this.ctx.log);
    await rm(arrival.dir, { recursive: true, force: true });
    this.ctx.log(`migration ${arrival.id}: ${arrival.name} committed`);
  }

  /** What a previous run left in `arriving/`: see Settlement. */
  loadUnsettled(): Promise<void> {
    return this.settlement.load();
  }

  /** True while the move `id` is starting its server here: it registers as `arriving`, until the commit. */
  starting(id: string): boolean {
    return this.arrivals.get(id)?.phase === 'starting';
  }

  /** The source of the move `id` if its server was started here and the move is not known committed. */
  uncommitted(id: string): string | undefined {
    const arrival = this.arrivals.get(id);
    return arrival?.phase === 'started' ? arrival.source : this.settlement.record(id)?.source;
  }

  /**
   * How a registering process that a move started stands: held until settled, or refused. A
   * move brings the one server it names: a process it started that registers another name (its
   * source sent other arguments) is refused, so that a peer cannot take a name here that way.
   */
  verdict(arrival: string, name: string): 'unsettled' | 'abandoned' | 'misnamed' | undefined {
    const move = this.arrivals.get(arrival) ?? this.settlement.record(arrival);
    if (move !== undefined && move.name !== name) return 'misnamed';
    return this.settlement.state(arrival);
  }

  /** What the environment of a process the move `id` started holds (see launch.ts, `end`). */
  marks(id: string): string[] {
    return marksOf(this.arrivals.get(id) ?? this.settlement.record(id) ?? { id });
  }

  /** A started server whose commit never came (the source's word was lost): the source is asked. */
  private unheard(arrival: Arrival): void {
    if (this.arrivals.get(arrival.id) !== arrival) return;
    this.ctx.log(`migration ${arrival.id}: no commit ${SETTLE_AFTER_MS} ms after ${arrival.name} started; asking ${arrival.source}`);
    this.arrivals.delete(arrival.id);
    this.settlement.begin({ id: arrival.id, name: arrival.name, source: arrival.source, pid: arrival.pid, spare: arrival.spare });
  }

  /** Keeps `arriving/<id>/arrival.json` up to date (see ArrivalRecord). */
  private record({ id, name, source, pid, spare, dir }: Arrival): void {
    const record: ArrivalRecord = { id, name, source, ...(pid === undefined ? {} : { pid }), ...(spare === undefined ? {} : { spare }) };
    writeRecordFile(join(dir, ARRIVAL_RECORD_FILE), Buffer.from(JSON.stringify(record)), false);
  }

  /** Removes what a migration received and ends what it started. */
  async abort(id: unknown, reason: string): Promise<void> {
    const arrival = this.arrivals.get(String(id));
    if (!arrival) return;
    this.arrivals.delete(arrival.id);
    clearTimeout(arrival.silence);
    if (arrival.pid !== undefined) kill(arrival.pid);
    // A server it started may have registered: its name is free for the next move now, not once its exit is seen.
    this.ctx.evict(arrival.name, arrival.id);
    await arrival.receiver.abort().catch(() => undefined);
    await arrival.state.discard();
    await rm(arrival.dir, { recursive: true, force: true });
    this.ctx.log(`migration ${arrival.id}: aborted (${reason}); ${arrival.name} removed`);
    if (arrival.spare !== undefined) this.ctx.spares.fill();
  }

  /** The source's connection closed: what had not started yet cannot finish. A started one is settled later (see `unheard`). */
  peerClosed(peer: object): void {
    for (const arrival of this.arrivals.values()) {
      if (arrival.peer !== peer || arrival.phase === 'started') continue;
      this.abort(arrival.id, 'the source hung up').catch((error: Error) => this.ctx.log(`migration ${arrival.id}: cleanup failed: ${error.message}`));
    }
  }

  private receiving(id: unknown): Arrival {
    const arrival = this.arrivals.get(String(id));
    if (!arrival || arrival.phase !== 'receiving') throw refuseMigration(`no migration ${JSON.stringify(id)} is receiving here`);
    this.watch(arrival);
    return arrival;
  }

  /** (Re)starts the arrival's silence timer: the source was just heard from, or answered. */
  private watch(arrival: Arrival): void {
    clearTimeout(arrival.silence);
    arrival.silence = setTimeout(() => {
      if (this.arrivals.get(arrival.id) !== arrival || arrival.phase !== 'receiving') return;
      this.abort(arrival.id, `nothing heard from ${arrival.source} for ${SILENCE_MS} ms`)
        .catch((error: Error) => this.ctx.log(`migration ${arrival.id}: cleanup failed: ${error.message}`));
    }, SILENCE_MS).unref();
  }

  /** The program's tree (see placeProgram); one this call built is walked by the source side later. */
  private async program({ manifest, program, id }: Arrival): Promise<string> {
    const { dir, built } = await placeProgram(this.ctx.spool, this.ctx.store, manifest, program, id);
    if (built) this.ctx.built(dir, manifest, program);
    return dir;
  }
}
