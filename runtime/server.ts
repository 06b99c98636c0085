// The MessagePack-RPC server behind `serve()`: many connections, many calls in flight on
// each, replies sent as calls finish. Bad input is answered BAD_REQUEST where the msgid can be
// read and closes that one connection where it cannot; nothing a peer sends stops the server.
import type { AddressInfo, Server as NetServer, Socket } from 'node:net';
import { RpcmigError, type WireError } from './errors.js';
import { formatAddress } from './daemonlink.js';
import { Migration, takeOrders, type Movable } from './migrating.js';
import { ClientRecords, CompletionRecords, HELLO, type SavedRecords } from './records.js';
import { failpoint } from './failpoints.js';
import { listening, serverHost } from './listener.js';
import { INTERNAL_PREFIX, registerInternal, rehearseSnapshot, RESTORE_ENV, restoredKeys, restoreInternal, unregisterInternal, warmCodec } from './state.js';
import { register, type MigrationReport, type Registration } from './register.js';
import { DEFAULT_MAX_FRAME, NOTIFICATION, Outbox, REQUEST, RESPONSE, readMessages, validate } from './wire.js';

export interface ServeOptions {
  /** Interface to listen on; default `RPCMIG_HOST`, then 127.0.0.1. */
  host?: string;
  /** Port to listen on; default `RPCMIG_PORT`, then 0 (any free port). */
  port?: number;
  /** Largest message a peer may send; a larger one closes its connection. Default 64 MiB. */
  maxFrame?: number;
  /** The local daemon, "host[:port]"; default `RPCMIG_DAEMON` or 127.0.0.1:4111. `false`: serve alone, silently. */
  daemon?: string | false;
  /** The cluster key file; default `RPCMIG_KEY_FILE`. */
  keyFile?: string;
  /** Milliseconds a silent client's completion records are kept; default `RPCMIG_RECORD_LEASE_MS`, then 60 s. */
  recordLease?: number;
}

export const DEFAULT_RECORD_LEASE_MS = 60_000;
/** How long a stale server answers MOVED before it exits. */
const STALE_GRACE_MS = 60_000;
/** When a server that can migrate compiles its snapshot code (see warmCodec). */
const WARM_CODEC_AFTER_MS = 500;
/** When a restored server warms up instead: its start-up is over, and it may be moved on soon. */
const WARM_AFTER_RESTORE_MS = 100;
/**
 * A restored state at most this large is encoded this many times then, for the codec to meet
 * its shapes (see rehearseSnapshot): at most ~15 ms of CPU here. After three rounds, rdict's
 * state of 40 KB takes ~0.3 ms to encode; before the first, 1–8 ms.
 */
const REHEARSE_MAX_BYTES = 256 * 1024;
const REHEARSE_ROUNDS = 3;

export interface Server {
  readonly name: string;
  /** Where clients reach it, "host:port". */
  readonly address: string;
  /** Stops reading new calls, waits for the calls executing to reply, then closes. */
  close(): Promise<void>;
}

/** The built-in procedure answering the server's current address (the paper's step (b)). */
export const WHEREIS = 'rpcmig.whereis';
/** The built-in procedure answering `{ clients, records }`: the completion records held now. */
export const STATS = 'rpcmig.stats';

type Procedure = (...params: unknown[]) => unknown;

/** How long close() waits for peers to hang up after their last reply, before cutting them. */
const LINGER_MS = 1000;

/** One peer: its decoder feeds `dispatch`, its replies leave through `outbox`. */
class Connection {
  readonly outbox: Outbox;
  readonly peer: string;
  complained = false;
  /** Set by the client's hello: its calls are recorded and answered once. */
  client: ClientRecords | undefined;

  constructor(readonly socket: Socket) {
    this.outbox = new Outbox(socket);
    this.peer = `${socket.remoteAddress}:${socket.remotePort}`;
  }
}

class RpcServer implements Server, Movable {
  address = '';
  readonly migration: Migration;
  readonly records: CompletionRecords;
  epoch = 0;
  /** Undone when the server closes: its signal handler, its entries in the state registry. */
  readonly cleanups: Array<() => void> = [];
  private readonly connections = new Set<Connection>();
  private readonly procedures: Map<string, Procedure>;
  private executing = 0;
  private idle: Array<() => void> = [];
  private closing: Promise<void> | undefined;
  registration: Registration | undefined;

  constructor(
    readonly name: string,
    private readonly target: object,
    private readonly net: NetServer,
    private readonly maxFrame: number,
    leaseMs: number,
  ) {
    this.records = new CompletionRecords(leaseMs);
    this.procedures = procedureTable(target);
    this.procedures.set(WHEREIS, () => (this.migration.phase.name === 'moved' ? this.migration.phase.to : this.address));
    this.procedures.set(STATS, () => ({ clients: this.records.clientCount, records: this.records.size }));
    this.migration = new Migration((line) => process.stderr.write(`rpcmig: ${name}: ${line}\n`));
    net.on('connection', (socket) => this.accept(socket));
  }

  private accept(socket: Socket): void {
    if (this.closing) return void socket.destroy();
    socket.setNoDelay(true);
    const connection = new Connection(socket);
    this.connections.add(connection);
    socket.on('error', () => socket.destroy());
    socket.on('close', () => this.connections.delete(connection));
    socket.on('drain', () => this.closing || socket.resume());
    readMessages(socket, {
      onValue: (value) => this.dispatch(connection, value),
      onFatal: (error) => this.refuse(connection, error.message),
    }, this.maxFrame);
  }

  private dispatch(connection: Connection, value: unknown): void {
    if (connection.socket.destroyed) return; // refused earlier in the same chunk
    const message = validate(value);
    if (!Array.isArray(message)) {
      if (message.msgid === undefined) return this.refuse(connection, message.bad);
      return this.badRequest(connection, message.msgid, message.bad);
    }
    if (message[0] === REQUEST) return this.execute(connection, message[1], message[2], message[3]);
    if (message[0] === NOTIFICATION) {
      if (message[1] !== HELLO) return this.execute(connection, -1, message[1], message[2]);
      connection.client = this.records.hello(message[2]);
      if (connection.client === undefined) this.complain(connection, 'a hello that is not [clientId, below]; its calls are not recorded');
      return;
    }
    this.badRequest(connection, message[1], 'a server takes requests and notifications, not responses');
  }

  /**
   * Runs one call; `msgid` -1 marks a notification, which gets no reply. The rare paths (held,
   * resent) make their closures in methods of their own, so that a common call makes none.
   */
  private execute(connection: Connection, msgid: number, method: string, params: unknown[]): void {
    if (!this.migration.accepting && method !== WHEREIS) return this.hold(connection, msgid, method, params);
    const client = connection.client;
    if (client === undefined || msgid < 0) return this.run(connection, msgid, method, params, undefined);
    if (client.has(msgid)) return this.resent(connection, client, msgid);
    if (msgid < client.below) return this.badRequest(connection, msgid, `call ${msgid} of this client was acknowledged already`);
    client.start(msgid);
    this.run(connection, msgid, method, params, client);
  }

  /** A resend (its reply was lost): answered from the record, never run again. */
  private resent(connection: Connection, client: ClientRecords, msgid: number): void {
    client.answer(msgid, (error, result) => this.answer(connection, msgid, error, result));
  }

  /** A call arriving mid-move: run once the server serves again, or answered MOVED. */
  private hold(connection: Connection, msgid: number, method: string, params: unknown[]): void {
    this.migration.hold({
      run: () => this.execute(connection, msgid, method, params),
      answer: (error) => this.answer(connection, msgid, error, null),
    });
  }

  /** `client`: the caller's records, where the outcome is kept (undefined: not recorded). */
  private run(connection: Connection, msgid: number, method: string, params: unknown[], client: ClientRecords | undefined): void {
    const procedure = this.procedures.get(method);
    if (procedure === undefined) {
      const error = { code: 'NO_SUCH_METHOD', message: `${this.name} has no procedure ${JSON.stringify(method)}` };
      return this.outcome(connection, msgid, error, null, client);
    }
    let result: unknown;
    let later: boolean;
    try {
      result = procedure.apply(this.target, params);
      later = isThenable(result);
    } catch (thrown) {
      return this.outcome(connection, msgid, appError(thrown), null, client);
    }
    if (later) this.await(connection, msgid, result as PromiseLike<unknown>, client);
    else this.outcome(connection, msgid, null, result, client);
  }

  /** A procedure that returned a promise: its outcome once settled. Its closures live here, not in `run`, so a synchronous call makes none. */
  private await(connection: Connection, msgid: number, pending: PromiseLike<unknown>, client: ClientRecords | undefined): void {
    this.executing++;
    // Promise.resolve: a foreign thenable whose `then` throws becomes a rejection, not a crash.
    Promise.resolve(pending).then(
      (value) => this.finish(connection, msgid, null, value, client),
      (thrown: unknown) => this.finish(connection, msgid, appError(thrown), null, client),
    );
  }

  private finish(connection: Connection, msgid: number, error: WireError | null, result: unknown, client: ClientRecords | undefined): void {
    this.outcome(connection, msgid, error, result, client);
    if (--this.executing === 0) for (const resolve of this.idle.splice(0)) resolve();
  }

  private outcome(connection: Connection, msgid: number, error: WireError | null, result: unknown, client: ClientRecords | undefined): void {
    if (client !== undefined) client.finish(msgid, error, result);
    this.answer(connection, msgid, error, result);
  }

  whenIdle(): Promise<void> {
    return this.executing === 0 ? Promise.resolve() : new Promise((resolve) => this.idle.push(resolve));
  }

  /** The grace period after a move is over: stop, then end the process it moved out of. */
  async retire(): Promise<void> {
    await this.close();
    process.exit(0);
  }

  private answer(connection: Connection, msgid: number, error: WireError | null, result: unknown): void {
    if (msgid < 0) {
      if (error) this.complain(connection, `notification failed: ${error.code} ${error.message}`);
      return;
    }
    if (connection.socket.destroyed) return;
    try {
      connection.outbox.send([RESPONSE, msgid, error, result]);
    } catch (thrown) {
      const message = `the result cannot be encoded: ${thrown instanceof Error ? thrown.message : String(thrown)}`;
      connection.outbox.send([RESPONSE, msgid, { code: 'APP_ERROR', message }, null]);
    }
    if (connection.socket.writableLength > this.maxFrame) connection.socket.pause();
  }

  private badRequest(connection: Connection, msgid: number, reason: string): void {
    this.complain(connection, `bad request (${reason}); answered BAD_REQUEST`);
    this.answer(connection, msgid, { code: 'BAD_REQUEST', message: reason }, null);
  }

  /** Input that cannot be answered: log it and hang up on that peer alone. */
  private refuse(connection: Connection, reason: string): void {
    this.complain(connection, `unreadable input (${reason}); connection closed`);
    connection.outbox.flush();
    connection.socket.destroy();
  }

  /** One log line per misbehaving connection, however much it sends. */
  private complain(connection: Connection, text: string): void {
    if (connection.complained) return;
    connection.complained = true;
    process.stderr.write(`rpcmig: ${this.name}: ${connection.peer}: ${text}\n`);
  }

  close(): Promise<void> {
    this.closing ??= this.drainAndStop();
    return this.closing;
  }

  private async drainAndStop(): Promise<void> {
    const stopped = new Promise<void>((resolve) => this.net.close(() => resolve()));
    for (const { socket } of this.connections) socket.pause();
    await this.whenIdle();
    for (const { outbox, socket } of this.connections) {
      outbox.flush();
      socket.end();
    }
    const cut = setTimeout(() => this.connections.forEach(({ socket }) => socket.destroy()), LINGER_MS);
    await stopped;
    clearTimeout(cut);
    this.registration?.close();
    this.records.close();
    for (const cleanup of this.cleanups.splice(0)) cleanup();
  }
}

/** Own enumerable function properties only: never `constructor`, `__proto__`, `toString`. */
function procedureTable(target: object): Map<string, Procedure> {
  const table = new Map<string, Procedure>();
  for (const [name, value] of Object.entries(target)) {
    if (typeof value === 'function') table.set(name, value as Procedure);
  }
  return table;
}

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return typeof value === 'object' && value !== null && typeof (value as PromiseLike<unknown>).then === 'function';
}

function appError(thrown: unknown): WireError {
  const message = thrown instanceof Error ? thrown.message : String(thrown);
  return new RpcmigError('APP_ERROR', message).toWire();
}

/**
 * Node opens its inspector — a debugger anyone on the host can attach to — on SIGUSR1 unless the
 * process listens for that signal. A server that runs shipped code keeps it closed (use
 * `node --inspect` to debug on purpose). Once per process.
 */
export function closeInspectorSignal(log: (line: string) => void): void {
  if (process.listenerCount('SIGUSR1') > 0) return;
  process.on('SIGUSR1', () => log('SIGUSR1 ignored: the inspector stays closed (start node with --inspect to debug)'));
}

function envPort(): number | undefined {
  const text = process.env.RPCMIG_PORT;
  return text && /^\d{1,5}$/.test(text) ? Number(text) : undefined;
}

const EPOCH_PREFIX = `${INTERNAL_PREFIX}epoch:`;

/**
 * A snapshot names the servers it was taken from by their epoch keys. A state file taken from
 * another server (a source's mistake, or a peer's attack) is not restored under this name: its
 * variables would be served as this server's, its completion records and epoch dropped.
 */
function assertOwnState(name: string): void {
  const owners = restoredKeys(EPOCH_PREFIX).map((key) => key.slice(EPOCH_PREFIX.length));
  if (owners.length > 0 && !owners.includes(name)) {
    throw new Error(`rpcmig: cannot restore ${name}: the state file is ${owners.join(', ')}'s, not ${name}'s`);
  }
}

/**
 * Serves `procedures` (its own enumerable functions) under `name`, and registers with the
 * local daemon when one answers. Resolves once listening and registered (or known alone).
 */
export async function serve<T extends object>(name: string, procedures: T, options: ServeOptions = {}): Promise<Server> {
  assertOwnState(name);
  const host = serverHost(options.host);
  // Listening before the server takes connections: it attaches its handler before the next event.
  const net = await listening(host, options.port ?? envPort() ?? 0);
  const lease = options.recordLease ?? (Number(process.env.RPCMIG_RECORD_LEASE_MS) || DEFAULT_RECORD_LEASE_MS);
  const server = new RpcServer(name, procedures, net, options.maxFrame ?? DEFAULT_MAX_FRAME, lease);
  // The completion records travel in the state file, so a resend after a move is answered too.
  const recordsKey = `${INTERNAL_PREFIX}records:${name}`;
  const saved = restoreInternal(recordsKey);
  if (saved !== undefined) server.records.restore(saved as SavedRecords);
  registerInternal(recordsKey, () => server.records.save());
  server.cleanups.push(() => unregisterInternal(recordsKey));
  // Each move raises the epoch: a restored server is one newer than the snapshot it came from.
  const epochKey = `${EPOCH_PREFIX}${name}`;
  const savedEpoch = restoreInternal(epochKey);
  server.epoch = typeof savedEpoch === 'number' ? savedEpoch + 1 : 0;
  registerInternal(epochKey, () => server.epoch);
  server.cleanups.push(() => unregisterInternal(epochKey));
  const bound = net.address() as AddressInfo;
  server.address = formatAddress({ host, port: bound.port });
  net.on('error', (error) => process.stderr.write(`rpcmig: ${name}: ${error.message}\n`));
  const log = (line: string) => process.stderr.write(`rpcmig: ${name}: ${line}\n`);
  if (process.env[RESTORE_ENV]) await failpoint('restore.after', log);
  const daemon = options.daemon ?? process.env.RPCMIG_DAEMON ?? '127.0.0.1:4111';
  // Told to a daemon it registers with again: the move it holds its calls for, or the one it made.
  const report = (): MigrationReport => {
    const phase = server.migration.phase;
    if (phase.name === 'snapshotted') return { migration: phase.order.id };
    return phase.name === 'moved' ? { moved: { to: phase.to, epoch: phase.epoch } } : {};
  };
  if (daemon !== false) server.registration = await register(name, server.address, server.epoch, daemon, options.keyFile, report);
  closeInspectorSignal(log);
  const stale = server.registration?.stale;
  if (stale) {
    // Restored from an older snapshot than the one serving now: it answers MOVED, never calls.
    log(`epoch ${server.epoch} is older than epoch ${stale.epoch} at ${stale.to}; answering MOVED`);
    server.migration.enter({ name: 'moved', to: stale.to, epoch: stale.epoch });
    setTimeout(() => void server.retire(), STALE_GRACE_MS);
  }
  if (server.registration) {
    server.cleanups.push(takeOrders(server.registration, server, log));
    // Off the start-up path, well before any order: the first snapshot then runs compiled code.
    // A restored server's start-up is over (its clients' calls came back within milliseconds),
    // and it may be moved on soon: it warms up sooner.
    setTimeout(() => {
      warmCodec();
      rehearseSnapshot(REHEARSE_MAX_BYTES, REHEARSE_ROUNDS);
    }, process.env[RESTORE_ENV] ? WARM_AFTER_RESTORE_MS : WARM_CODEC_AFTER_MS).unref();
  } else {
    const ignore = () => log('SIGUSR2, but this server has no daemon to take a migration order from; ignored');
    process.on('SIGUSR2', ignore);
    server.cleanups.push(() => process.off('SIGUSR2', ignore));
  }
  return server;
}
