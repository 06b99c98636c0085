// The daemon (the paper's MD): listens on its well-known port, authenticates every
// connection before reading anything else, and dispatches MessagePack-RPC requests through
// one method table. A server's registering connection is its control connection.
import { mkdirSync, statSync } from 'node:fs';
import { createServer, type Server as NetServer, type Socket } from 'node:net';
import { RpcmigError, type WireError } from '../runtime/errors.js';
import { formatAddress, parseAddress, type Address } from '../runtime/daemonlink.js';
import { answerHandshake, DEFAULT_HANDSHAKE_TIMEOUT, REFUSALS } from '../runtime/handshake.js';
import { DEFAULT_MAX_FRAME, encode, readMessages, REQUEST, RESPONSE, validate } from '../runtime/wire.js';
import { checkName, checkRegistration, Names, type Listing, type Server } from './names.js';

export interface DaemonOptions {
  /** Port 0 picks a free port; `Daemon.address` tells which. */
  listen: Address;
  /** The address other hosts and clients use; defaults to the listening address. */
  advertise?: Address;
  /** The spool: created mode 0700 if missing, refused if group or others can access it. */
  dir: string;
  key: Buffer;
  /** Milliseconds a connection has to complete the handshake. */
  handshakeTimeout?: number;
  /** Largest MessagePack-RPC message after authentication. */
  maxFrame?: number;
  /** How often registered pids are checked for life, in milliseconds. */
  pidCheckInterval?: number;
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

export function prepareSpool(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const mode = statSync(dir).mode & 0o777;
  if (mode & 0o077) {
    const octal = mode.toString(8).padStart(4, '0');
    throw new Error(`the spool ${dir} is accessible by group or others (mode ${octal}); chmod 700 it`);
  }
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
  return new NameDaemon(server, address, options);
}

function isAlive(server: Server): boolean {
  try {
    process.kill(server.pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

const WILDCARDS = new Set(['0.0.0.0', '::', '']);

class NameDaemon implements Daemon {
  readonly advertised: string;
  private readonly names: Names;
  private readonly sockets = new Set<Socket>();
  private readonly sweeper: NodeJS.Timeout;
  private readonly methods: Record<string, Method> = {
    register: (peer, [registration]) => this.register(peer, registration),
    lookup: (_peer, [name]) => this.lookup(name),
    ls: (): Listing => this.names.list((server) => this.reachable(server.address)),
  };

  constructor(private readonly server: NetServer, readonly address: Address, private readonly options: DaemonOptions) {
    this.advertised = formatAddress(options.advertise ?? address);
    this.names = new Names(this.advertised);
    this.sweeper = setInterval(() => this.sweep(), options.pidCheckInterval ?? 1000).unref();
    server.on('connection', (socket) => void this.accept(socket));
  }

  async close(): Promise<void> {
    clearInterval(this.sweeper);
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const socket of this.sockets) socket.destroy();
    await closed;
  }

  private async accept(socket: Socket): Promise<void> {
    this.sockets.add(socket);
    socket.on('error', () => undefined); // a reset peer still emits 'close', handled below
    const peer = { socket, label: formatAddress({ host: socket.remoteAddress ?? '?', port: socket.remotePort ?? 0 }) };
    socket.once('close', () => this.disconnected(peer));
    const verdict = await answerHandshake(socket, this.options.key, this.options.handshakeTimeout ?? DEFAULT_HANDSHAKE_TIMEOUT);
    if (!verdict.accepted) return this.options.log(`refused ${peer.label}: ${REFUSALS[verdict.code]}`);
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 10_000);
    readMessages(socket, {
      onValue: (value) => void this.receive(peer, value),
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

  private reply(peer: Peer, msgid: number, error: WireError | null, result: unknown): void {
    if (peer.socket.writable) peer.socket.write(encode([RESPONSE, msgid, error, result]));
  }

  private drop(peer: Peer, why: string): void {
    this.options.log(`closed ${peer.label}: ${why}`);
    peer.socket.destroy();
  }

  private register(peer: Peer, value: unknown): { name: string; address: string } {
    const registration = checkRegistration(value);
    let server: Server;
    try {
      server = this.names.register(registration, peer, isAlive);
    } catch (error) {
      this.options.log(`refused register ${registration.name} pid ${registration.pid} from ${peer.label}: name taken`);
      throw error;
    }
    this.options.log(`register ${server.name} pid ${server.pid} at ${server.address}`);
    return { name: server.name, address: this.reachable(server.address) };
  }

  private lookup(value: unknown): { name: string; address: string } {
    const server = this.names.lookup(checkName(value));
    return { name: server.name, address: this.reachable(server.address) };
  }

  /** A server listening on every interface is reached through the daemon's advertised host. */
  private reachable(address: string): string {
    const where = parseAddress(address, 0);
    if (!WILDCARDS.has(where.host)) return address;
    return formatAddress({ host: parseAddress(this.advertised).host, port: where.port });
  }

  private disconnected(peer: Peer): void {
    this.sockets.delete(peer.socket);
    for (const server of this.names.ownedBy(peer)) this.unregister(server, 'control connection closed');
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
