// The daemon (the paper's MD): listens on its well-known port, authenticates every
// connection before reading anything else, and dispatches MessagePack-RPC requests through
// one method table: the name service, and both halves of a migration (migrate.ts at the
// source, arrive.ts at the destination). A server's registering connection is its control
// connection: orders come back to it as notifications.
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { createServer, type Server as NetServer, type Socket } from 'node:net';
import { RpcmigError, type WireError } from '../runtime/errors.js';
import { formatAddress, parseAddress, type Address } from '../runtime/daemonlink.js';
import { answerHandshake, DEFAULT_HANDSHAKE_TIMEOUT, REFUSALS } from '../runtime/handshake.js';
import { DEFAULT_MAX_FRAME, encode, NOTIFICATION, readMessages, REQUEST, RESPONSE, validate } from '../runtime/wire.js';
import { Arrivals } from './arrive.js';
import type { Outcome } from './settle.js';
import { lookup, type LookupContext } from './lookup.js';
import { DEFAULT_SPARES, end, Spares } from './launch.js';
import { keyFileFor, prepareSpool } from './spool.js';
import { Forwards } from './forwards.js';
import { Coordinator } from './migrate.js';
import { Programs } from './programs.js';
import { checkMigrate, type SourceContext } from './move.js';
import { Recovery } from './recover.js';
import { checkName, checkRegistration, isAlive, isMoveId, Names, type Listing, type Registration, type Server } from './names.js';
import { BlobStore } from './transfer.js';
import { DEFAULT_BLANKS } from './blanks.js';

export interface DaemonOptions {
  /** Port 0 picks a free port; `Daemon.address` tells which. */
  listen: Address;
  /** The address other hosts and clients use; defaults to the listening address. */
  advertise?: Address;
  /** The spool: created mode 0700 if missing, refused if group or others can access it. */
  dir: string;
  key: Buffer;
  /** The key's file, handed to the servers this daemon starts; written into the spool if absent. */
  keyFile?: string;
  /** Milliseconds a connection has to complete the handshake. */
  handshakeTimeout?: number;
  /** Largest MessagePack-RPC message after authentication. */
  maxFrame?: number;
  /** How often registered pids are checked for life, in milliseconds. */
  pidCheckInterval?: number;
  /** Connections one peer host may hold open at once; more are closed at once. */
  maxConnectionsPerPeer?: number;
  /** Node processes kept started for moves to this host (`--spares`): their standbys skip Node's start-up. Default 1. */
  spares?: number;
  /** Empty files kept ready for the blobs of programs arriving here (`--blanks`), and a quarter as many directories for their trees: creating them is a first move's cost. Default DEFAULT_BLANKS. */
  blanks?: number;
  /** One line per event, without a prefix or newline. */
  log: (line: string) => void;
}

export interface Daemon {
  readonly address: Address;
  readonly advertised: string;
  close(): Promise<void>;
}

/** A method of the daemon: `peer` is the authenticated connection that called it. */
type Method = (peer: Peer, params: unknown[]) => unknown;

interface Peer {
  socket: Socket;
  label: string;
}

export async function startDaemon(options: DaemonOptions): Promise<Daemon> {
  prepareSpool(options.dir);
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.listen.port, options.listen.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const bound = server.address();
  const address = typeof bound === 'object' && bound ? { host: bound.address, port: bound.port } : options.listen;
  let daemon: NameDaemon | undefined;
  const idle = () => daemon?.idle() ?? false;
  daemon = new NameDaemon(server, address, options, await BlobStore.open(options.dir, { blanks: options.blanks ?? DEFAULT_BLANKS, log: options.log, idle }));
  await daemon.init();
  daemon.spares.fill();
  return daemon;
}

/** Connections one host may hold open to a daemon: every server there holds one, so it is ample. */
export const DEFAULT_MAX_CONNECTIONS_PER_PEER = 1024;

const WILDCARDS = new Set(['0.0.0.0', '::', '']);

class NameDaemon implements Daemon {
  readonly advertised: string;
  private readonly id = randomBytes(8).toString('hex');
  private readonly names: Names;
  private readonly forwards: Forwards;
  private readonly coordinator: Coordinator;
  /** The program trees of the servers here, walked in a thread of their own (programs.ts). */
  private readonly programs: Programs;
  private readonly recovery: Recovery;
  private readonly lookups: LookupContext;
  private readonly arrivals: Arrivals;
  readonly spares: Spares;
  private readonly sockets = new Set<Socket>();
  /** Open connections by peer host, for the per-peer limit. */
  private readonly perHost = new Map<string, number>();
  private readonly sweeper: NodeJS.Timeout;
  /** Settles once `init` has read what a previous run left. */
  private loaded: Promise<void> = Promise.resolve();
  private readonly methods: Record<string, Method> = {
    hello: () => ({ id: this.id, address: this.advertised }),
    register: (peer, [registration]) => this.register(peer, registration),
    lookup: (_peer, [name, hops]) => lookup(this.lookups, checkName(name), Number(hops) || 0),
    ls: (): Listing => this.names.list((server) => this.reachable(server.address), this.forwards.list()),
    // the source's half of a migration: the CLI's order, then the signalled server's calls
    migrate: (peer, [request]) => this.coordinator.migrate(checkMigrate(request), (progress) => this.tell(peer, 'progress', [progress])),
    order: (peer) => this.coordinator.orderFor(this.names.ownedBy(peer)[0]),
    snapshot: (peer, [report]) => this.coordinator.snapshotted(this.names.ownedBy(peer)[0], report),
    // the destination's half, called by the source daemon
    prepare: (peer, [shipment]) => this.arrivals.prepare(peer, shipment),
    blob: (_peer, params) => this.arrivals.blob(params),
    prestart: (_peer, [id]) => this.arrivals.prestart(id),
    state: (_peer, params) => this.arrivals.state(params),
    start: (_peer, [id]) => this.arrivals.start(id),
    commit: (_peer, [id]) => this.arrivals.commit(id),
    abort: (_peer, [id, reason]) => this.arrivals.abort(id, String(reason)),
    status: (_peer, [id]) => this.arrivals.status(id),
    // a destination that restarted mid-move asks the source how it ended
    outcome: (_peer, [id]) => ({ outcome: this.outcome(id) }),
    // a moved server's standby, waiting for its state
    standby: (_peer, [id]) => this.arrivals.standing(id),
    gate: (_peer, [id]) => this.arrivals.gate(id),
  };

  constructor(private readonly server: NetServer, readonly address: Address, private readonly options: DaemonOptions, private readonly store: BlobStore) {
    this.advertised = formatAddress(options.advertise ?? address);
    this.names = new Names(this.advertised);
    this.forwards = new Forwards(options.dir, options.log);
    this.programs = new Programs([options.dir], options.log);
    const log = options.log;
    const source: SourceContext = {
      key: options.key, spool: options.dir, advertised: this.advertised, daemonId: this.id,
      names: this.names, forwards: this.forwards, programs: this.programs, log,
      notify: (server, method, params) => this.notify(server, method, params),
      arrivingFrom: (server) => (server.arrival === undefined ? undefined : this.arrivals.uncommitted(server.arrival)),
    };
    this.coordinator = new Coordinator(source);
    this.recovery = new Recovery(source);
    const host = parseAddress(this.advertised).host;
    const serverEnv = { RPCMIG_DAEMON: this.advertised, RPCMIG_KEY_FILE: keyFileFor(options.dir, options.key, options.keyFile), RPCMIG_HOST: host };
    this.spares = new Spares({ count: options.spares ?? DEFAULT_SPARES, dir: join(options.dir, 'spares'), env: serverEnv, log });
    this.arrivals = new Arrivals({
      spool: options.dir, key: options.key, store, log, spares: this.spares, serverEnv,
      confirm: (name, id) => this.confirm(name, id),
      evict: (name, id) => this.evict(name, id),
      built: (root, manifest, program) => this.programs.arrived(root, manifest, program),
      filesOf: (hashes) => this.programs.filesOf(hashes),
      serves: (name) => this.names.all().some((s) => s.name === name && s.state !== 'moved'),
    });
    this.lookups = {
      names: this.names, forwards: this.forwards, key: options.key,
      reachable: (address) => this.reachable(address),
      uncommitted: (id) => this.arrivals.uncommitted(id),
      confirm: (name, id) => this.confirm(name, id),
    };
    this.sweeper = setInterval(() => this.sweep(), options.pidCheckInterval ?? 1000).unref();
    server.on('connection', (socket) => this.accept(socket).catch((error: Error) => this.internal('accepting a connection', error)));
  }

  /** What a previous run left under way is read before the first server registers. */
  init(): Promise<void> {
    this.loaded = (async () => {
      await this.recovery.loadUnresolved();
      await this.arrivals.loadUnsettled();
    })();
    return this.loaded;
  }

  /** No move is under way here, as source or destination. */
  idle(): boolean {
    return this.coordinator.underway === 0 && this.arrivals.underway === 0;
  }

  async close(): Promise<void> {
    clearInterval(this.sweeper);
    this.spares.close();
    this.store.close();
    this.programs.close();
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const socket of this.sockets) socket.destroy();
    await closed;
  }

  private async accept(socket: Socket): Promise<void> {
    socket.on('error', () => undefined); // a reset peer still emits 'close', handled below
    // Nothing is read before `init`: a server registering again must find the moves it is in.
    await this.loaded;
    if (socket.destroyed) return;
    const host = socket.remoteAddress ?? '?';
    const peer = { socket, label: formatAddress({ host, port: socket.remotePort ?? 0 }) };
    const open = this.perHost.get(host) ?? 0;
    const limit = this.options.maxConnectionsPerPeer ?? DEFAULT_MAX_CONNECTIONS_PER_PEER;
    if (open >= limit) {
      this.options.log(`refused ${peer.label}: ${host} holds ${limit} connections already`);
      return void socket.destroy();
    }
    this.perHost.set(host, open + 1);
    this.sockets.add(socket);
    socket.once('close', () => {
      const left = (this.perHost.get(host) ?? 1) - 1;
      if (left > 0) this.perHost.set(host, left);
      else this.perHost.delete(host);
      this.disconnected(peer);
    });
    const verdict = await answerHandshake(socket, this.options.key, this.options.handshakeTimeout ?? DEFAULT_HANDSHAKE_TIMEOUT);
    if (!verdict.accepted) return this.options.log(`refused ${peer.label}: ${REFUSALS[verdict.code]}`);
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 10_000);
    readMessages(socket, {
      onValue: (value) => this.receive(peer, value).catch((error: Error) => this.internal(`serving ${peer.label}`, error)),
      onFatal: (error) => this.drop(peer, `unreadable input (${error.message})`),
    }, this.options.maxFrame ?? DEFAULT_MAX_FRAME);
  }

  private async receive(peer: Peer, value: unknown): Promise<void> {
    const message = validate(value);
    if ('bad' in message) {
      if (message.msgid === undefined) return this.drop(peer, message.bad);
      this.options.log(`bad request from ${peer.label}: ${message.bad}`);
      return this.reply(peer, message.msgid, { code: 'BAD_REQUEST', message: message.bad }, null);
    }
    if (message[0] === RESPONSE) return this.drop(peer, 'a response to a call the daemon never made');
    if (message[0] !== REQUEST) return; // peers have nothing to notify a daemon of yet
    const [, msgid, method, params] = message;
    if (!Object.hasOwn(this.methods, method)) {
      return this.reply(peer, msgid, { code: 'NO_SUCH_METHOD', message: `the daemon has no method ${JSON.stringify(method)}` }, null);
    }
    const outcome = await this.run(this.methods[method], peer, params);
    if (outcome.ok) this.reply(peer, msgid, null, outcome.result);
    else this.reply(peer, msgid, outcome.error, null);
  }

  private async run(handler: Method, peer: Peer, params: unknown[]): Promise<{ ok: true; result: unknown } | { ok: false; error: WireError }> {
    try {
      return { ok: true, result: (await handler(peer, params)) ?? null };
    } catch (error) {
      if (error instanceof RpcmigError) return { ok: false, error: error.toWire() };
      this.options.log(`internal error serving ${peer.label}: ${(error as Error).message}`);
      return { ok: false, error: { code: 'APP_ERROR', message: `the daemon failed: ${(error as Error).message}` } };
    }
  }

  /** A bug, not bad input: logged, and the daemon goes on. */
  private internal(doing: string, error: Error): void {
    this.options.log(`internal error ${doing}: ${error.stack ?? error.message}`);
  }

  private reply(peer: Peer, msgid: number, error: WireError | null, result: unknown): void {
    if (peer.socket.writable) peer.socket.write(encode([RESPONSE, msgid, error, result]));
  }

  private drop(peer: Peer, why: string): void {
    this.options.log(`closed ${peer.label}: ${why}`);
    peer.socket.destroy();
  }

  private register(peer: Peer, value: unknown): { name: string; address: string; stale?: { to: string; epoch: number } } {
    const registration = checkRegistration(value);
    const verdict = this.admitArrival(registration);
    const newer = this.names.all().find((s) => s.name === registration.name && s.state === 'serving');
    if (newer && (registration.epoch ?? 0) > 0 && (newer.epoch ?? 0) >= registration.epoch!) {
      this.options.log(`register ${registration.name} pid ${registration.pid}: stale (epoch ${registration.epoch}; pid ${newer.pid} serves epoch ${newer.epoch ?? 0})`);
      return { name: registration.name, address: registration.address, stale: { to: this.reachable(newer.address), epoch: newer.epoch ?? 0 } };
    }
    let server: Server;
    try {
      server = this.names.register(registration, peer, isAlive);
    } catch (error) {
      this.options.log(`refused register ${registration.name} pid ${registration.pid} from ${peer.label}: name taken`);
      throw error;
    }
    const address = this.reachable(server.address);
    const forward = this.forwards.get(server.name);
    const epoch = server.epoch ?? 0;
    if (forward && epoch > 0 && forward.epoch >= epoch) {
      // Restored from a snapshot older than the server that moved on: it must not serve.
      server.state = 'moved';
      this.options.log(`register ${server.name} pid ${server.pid}: stale (epoch ${epoch}; epoch ${forward.epoch} is at ${forward.to})`);
      return { name: server.name, address, stale: { to: forward.to, epoch: forward.epoch } };
    }
    this.options.log(`register ${server.name} pid ${server.pid} at ${server.address}${epoch > 0 ? ` (epoch ${epoch})` : ''}`);
    if (verdict === 'unsettled') {
      server.state = 'arriving';
      this.options.log(`${server.name} arrived by move ${registration.arrival}, which is not settled yet: held until its source says`);
      return { name: server.name, address };
    }
    if (registration.moved !== undefined) {
      // In its grace period after a move this daemon committed before it stopped.
      server.state = 'moved';
      this.recovery.settleMoved(server, registration.moved).catch((error: Error) => this.options.log(`${server.name}: its forwarding entry was not saved: ${error.message}`));
      return { name: server.name, address };
    }
    if (registration.migration !== undefined) {
      // It holds its calls for a move this daemon began before it stopped: settle that move.
      this.recovery.resolve(server, registration.migration).catch((error: Error) => this.internal(`resolving migration ${registration.migration}`, error));
      return { name: server.name, address };
    }
    if (registration.arrival !== undefined && this.arrivals.starting(registration.arrival)) {
      // Brought by a move not committed yet: a lookup finds it only once its source committed (see `lookup`).
      server.state = 'arriving';
    } else {
      this.forwards.delete(server.name);
    }
    this.arrivals.registered(server, address);
    this.programs.ahead(server.root, server.name);
    return { name: server.name, address };
  }

  /**
   * A process a move started here registers only while that move stands, and only as the server
   * it brings; otherwise it is ended. Started for a move its source rolled back while this daemon
   * was down: the source serves. Registering another name: its source sent other arguments.
   */
  private admitArrival(registration: Registration): 'unsettled' | undefined {
    const { arrival, name, pid } = registration;
    if (arrival === undefined) return undefined;
    const verdict = this.arrivals.verdict(arrival, name);
    if (verdict !== 'abandoned' && verdict !== 'misnamed') return verdict;
    end(pid, this.arrivals.marks(arrival));
    const why = verdict === 'abandoned' ? `move ${arrival} was rolled back; ${name} serves at its source` : `move ${arrival} brings another server, not ${name}`;
    this.options.log(`refused register ${name} pid ${pid}: ${why}; ended it`);
    throw new RpcmigError('MIGRATION_FAILED', why);
  }

  /** How the move `id` ended, for its destination: known to the coordinator, the recovery, or the forwarding entries. */
  private outcome(id: unknown): Outcome {
    if (!isMoveId(id)) throw new RpcmigError('BAD_REQUEST', 'outcome takes a move id of 16 hex digits');
    const here = this.coordinator.outcome(id);
    if (here) return here;
    if (this.recovery.pending(id)) return 'pending';
    return this.forwards.made(id) ? 'committed' : 'aborted';
  }

  private confirm(name: string, id: string): void {
    const server = this.names.all().find((s) => s.name === name && s.arrival === id && s.state === 'arriving');
    if (!server) return;
    server.state = 'serving';
    this.forwards.delete(name);
  }

  private evict(name: string, id: string): void {
    const server = this.names.all().find((s) => s.name === name && s.arrival === id);
    if (!server) return;
    this.unregister(server, `move ${id} was rolled back`);
    end(server.pid, this.arrivals.marks(id));
  }

  private notify(server: Server, method: string, params: unknown[]): void {
    this.tell(server.owner as Peer, method, params);
  }

  private tell(peer: Peer, method: string, params: unknown[]): void {
    if (peer.socket.writable) peer.socket.write(encode([NOTIFICATION, method, params]));
  }

  /** A server listening on every interface is reached through the daemon's advertised host. */
  private reachable(address: string): string {
    const where = parseAddress(address, 0);
    if (!WILDCARDS.has(where.host)) return address;
    return formatAddress({ host: parseAddress(this.advertised).host, port: where.port });
  }

  private disconnected(peer: Peer): void {
    this.sockets.delete(peer.socket);
    this.arrivals.peerClosed(peer);
    for (const server of this.names.ownedBy(peer)) {
      this.coordinator.serverGone(server);
      this.unregister(server, 'control connection closed');
    }
  }

  private sweep(): void {
    for (const server of this.names.all()) {
      if (!isAlive(server)) this.unregister(server, `pid ${server.pid} exited`);
    }
  }

  private unregister(server: Server, why: string): void {
    if (this.names.unregister(server)) this.options.log(`unregister ${server.name} pid ${server.pid} (${why})`);
  }
}
