// The runtime's side of a daemon: addresses, the cluster key, and an authenticated
// MessagePack-RPC link. Servers register through it, clients look names up through it;
// daemon/ builds on the same pieces (runtime/ never imports daemon/).
import { closeSync, fstatSync, openSync, readFileSync } from 'node:fs';
import { connect, isIPv6, type Socket } from 'node:net';
import { RpcmigError } from './errors.js';
import { DEFAULT_HANDSHAKE_TIMEOUT, offerHandshake } from './handshake.js';
import { encode, NOTIFICATION, readMessages, REQUEST, RESPONSE, validate } from './wire.js';

export const DEFAULT_DAEMON_PORT = 4111;

export interface Address {
  host: string;
  port: number;
}

/** Reads `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address. */
export function parseAddress(text: string, defaultPort = DEFAULT_DAEMON_PORT): Address {
  const bad = (why: string) => new Error(`bad address ${JSON.stringify(text)}: ${why} (expected HOST, HOST:PORT or [IPv6]:PORT)`);
  const bracketed = /^\[([^\]]+)\](?::(.*))?$/.exec(text);
  let host: string;
  let port: string | undefined;
  if (bracketed) {
    [, host, port] = bracketed;
    if (!isIPv6(host)) throw bad(`${host} is not an IPv6 address`);
  } else if (isIPv6(text)) {
    host = text;
  } else {
    const colon = text.lastIndexOf(':');
    host = colon < 0 ? text : text.slice(0, colon);
    port = colon < 0 ? undefined : text.slice(colon + 1);
    if (host.includes(':')) throw bad('an IPv6 address with a port needs brackets');
  }
  if (host === '' || /[\s/]/.test(host)) throw bad('no host name');
  if (port === undefined) return { host, port: defaultPort };
  if (!/^\d{1,5}$/.test(port) || Number(port) > 65535) throw bad(`port ${JSON.stringify(port)} is not 0-65535`);
  return { host, port: Number(port) };
}

/** `host:port`, with brackets around an IPv6 host. */
export function formatAddress({ host, port }: Address): string {
  return isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
}

/**
 * The cluster key from `file`, or from RPCMIG_KEY_FILE. Refuses a key file that group or
 * others can access. Errors name the file, never its content.
 */
export function loadKey(file?: string): Buffer {
  const path = file ?? process.env.RPCMIG_KEY_FILE;
  if (!path) {
    throw new RpcmigError('AUTH_FAILED', 'no cluster key: pass --key-file FILE or set RPCMIG_KEY_FILE (rpcmig keygen FILE writes one)');
  }
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (error) {
    const why = (error as NodeJS.ErrnoException).code === 'ENOENT' ? 'it does not exist' : (error as Error).message;
    throw new RpcmigError('AUTH_FAILED', `cannot read the key file ${path}: ${why}`);
  }
  try {
    const mode = fstatSync(fd).mode & 0o777;
    if (mode & 0o077) {
      const octal = mode.toString(8).padStart(4, '0');
      throw new RpcmigError('AUTH_FAILED', `the key file ${path} is accessible by group or others (mode ${octal}); chmod 600 it`);
    }
    const text = readFileSync(fd, 'latin1').trim();
    if (!/^[0-9a-fA-F]{64}$/.test(text)) {
      throw new RpcmigError('AUTH_FAILED', `the key file ${path} does not hold a key (64 hex digits, as rpcmig keygen writes)`);
    }
    return Buffer.from(text, 'hex');
  } finally {
    closeSync(fd);
  }
}

/** `promise`, or a rejection with `late`'s error (default: "no answer within N ms") after `ms`. */
export function within<T>(ms: number, promise: Promise<T>, late: () => Error = () => new Error(`no answer within ${ms} ms`)): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(late()), ms)));
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export interface DaemonLink {
  /** The daemon's address, as given to openDaemon. */
  readonly address: string;
  /** A MessagePack-RPC request; an error reply rejects with its RpcmigError. */
  call(method: string, params: unknown[]): Promise<unknown>;
  /** Notifications the daemon sends (orders to a server, in the migration protocol). */
  onNotification(handler: (method: string, params: unknown[]) => void): void;
  close(): void;
  /** Resolves once the connection is closed, whoever closed it. */
  readonly closed: Promise<void>;
}

export interface OpenOptions {
  /** Milliseconds for connecting, and again for the handshake. */
  timeout?: number;
}

/** Connects to a daemon and authenticates; rejects with NO_DAEMON or AUTH_FAILED. */
export async function openDaemon(address: string | Address, key: Buffer, options: OpenOptions = {}): Promise<DaemonLink> {
  const where = typeof address === 'string' ? parseAddress(address) : address;
  const label = formatAddress(where);
  const timeout = options.timeout ?? DEFAULT_HANDSHAKE_TIMEOUT;
  const socket = await connectTo(where, label, timeout);
  try {
    await offerHandshake(socket, key, label, timeout);
  } catch (error) {
    socket.destroy();
    throw error;
  }
  return new Link(socket, label);
}

function connectTo(where: Address, label: string, timeout: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: where.host, port: where.port });
    const fail = (why: string) => {
      socket.destroy();
      reject(new RpcmigError('NO_DAEMON', `no daemon at ${label} (${why})`));
    };
    socket.setTimeout(timeout, () => fail(`no connection within ${timeout} ms`));
    const onError = (error: NodeJS.ErrnoException) => fail(error.code === 'ECONNREFUSED' ? 'connection refused' : error.code ?? error.message);
    socket.once('error', onError);
    socket.once('connect', () => {
      socket.setTimeout(0);
      socket.off('error', onError);
      // From here a socket error is followed by 'close', which the handshake and link handle.
      socket.on('error', () => undefined);
      resolve(socket);
    });
  });
}

interface Pending {
  method: string;
  resolve(result: unknown): void;
  reject(error: Error): void;
}

/** An authenticated connection to a daemon: requests out, replies and notifications in. */
class Link implements DaemonLink {
  readonly closed: Promise<void>;
  private readonly pending = new Map<number, Pending>();
  private readonly handlers: Array<(method: string, params: unknown[]) => void> = [];
  private nextId = 0;
  private lost: RpcmigError | undefined;

  constructor(private readonly socket: Socket, readonly address: string) {
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 10_000);
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.once('close', () => this.failPending());
    readMessages(socket, { onValue: (value) => this.receive(value), onFatal: (error) => this.broken(error) });
  }

  call(method: string, params: unknown[]): Promise<unknown> {
    if (this.lost || this.socket.destroyed) {
      return Promise.reject(this.lost ?? new RpcmigError('NO_DAEMON', `the link to the daemon at ${this.address} is closed`));
    }
    const id = this.nextId;
    this.nextId = (this.nextId + 1) >>> 0;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { method, resolve, reject });
      this.socket.write(encode([REQUEST, id, method, params]));
    });
  }

  onNotification(handler: (method: string, params: unknown[]) => void): void {
    this.handlers.push(handler);
  }

  close(): void {
    this.socket.end();
  }

  private receive(value: unknown): void {
    const message = validate(value);
    if ('bad' in message) return this.broken(new Error(message.bad));
    if (message[0] === RESPONSE) {
      const [, id, error, result] = message;
      const call = this.pending.get(id);
      if (!call) return this.broken(new Error(`a response to unknown call ${id}`));
      this.pending.delete(id);
      if (error === null || error === undefined) call.resolve(result);
      else call.reject(RpcmigError.fromWire(error));
    } else if (message[0] === NOTIFICATION) {
      for (const handler of this.handlers) handler(message[1], message[2]);
    } else {
      // A daemon gives orders by notification; it never expects an answer from its peers.
      const error = { code: 'NO_SUCH_METHOD', message: `a daemon link answers no requests (${message[2]})` };
      this.socket.write(encode([RESPONSE, message[1], error, null]));
    }
  }

  private broken(error: Error): void {
    this.lost = new RpcmigError('PROTOCOL_ERROR', `the daemon at ${this.address} sent something unreadable: ${error.message}`);
    this.socket.destroy();
  }

  private failPending(): void {
    for (const call of this.pending.values()) {
      call.reject(this.lost ?? new RpcmigError('NO_DAEMON', `the daemon at ${this.address} closed the connection before answering ${call.method}`));
    }
    this.pending.clear();
  }
}
