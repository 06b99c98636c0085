// The client behind `connect()`: a typed proxy over one pipelined MessagePack-RPC connection.
// Every call leaves through `Channel.call` and every reply comes back through `Channel.settle`,
// the one place where following a server's move will plug in. A call is never resent.
import { connect as connectSocket, type Socket } from 'node:net';
import { RpcmigError, type WireError } from './errors.js';
import { formatAddress, loadKey, openDaemon, parseAddress } from './daemonlink.js';
import { Outbox, readMessages, REQUEST, RESPONSE, validate } from './wire.js';

export interface CallOptions {
  /** Milliseconds each call (and connecting) may take before TIMEOUT; default 30 s. */
  timeout?: number;
}
export interface DirectTarget extends CallOptions {
  host: string;
  port: number;
}
export interface NamedOptions extends CallOptions {
  /** The daemon that knows the name, "host[:port]"; default `RPCMIG_DAEMON` or 127.0.0.1:4111. */
  daemon?: string;
  /** The cluster key file; default `RPCMIG_KEY_FILE`. */
  keyFile?: string;
}

type Procedure = (...params: never[]) => unknown;
/** Names the proxy keeps for itself: `close` ends the client, `then` would make it a promise. */
type Reserved = 'close' | 'then';

/** Each procedure of `T`, called remotely: same parameters, a promise of the awaited result. */
export type Remote<T> = {
  [K in keyof T as K extends Reserved ? never : T[K] extends Procedure ? K : never]: T[K] extends (...params: infer P) => infer R
    ? (...params: P) => Promise<Awaited<R>>
    : never;
};
export type Client<T> = Remote<T> & {
  /** Ends the connection; calls still waiting for replies fail with CLOSED. */
  close(): Promise<void>;
};

export const DEFAULT_TIMEOUT = 30_000;
const MAX_MSGID = 0xffffffff;
const LINGER_MS = 1000;

interface Pending {
  method: string;
  deadline: number;
  resolve(result: unknown): void;
  reject(error: Error): void;
}

/** Lets `new Promise` run without a closure per call: the executor parks its functions here. */
let parkedResolve: Pending['resolve'] = () => undefined;
let parkedReject: Pending['reject'] = () => undefined;
function park(resolve: Pending['resolve'], reject: Pending['reject']): void {
  parkedResolve = resolve;
  parkedReject = reject;
}

/** One connection to one server: calls in flight keyed by msgid, in the order they were sent. */
class Channel {
  private readonly pending = new Map<number, Pending>();
  private readonly outbox: Outbox;
  private nextId = 0;
  private timer: NodeJS.Timeout | undefined;
  private lost: RpcmigError | undefined;
  private readonly ended: Promise<void>;

  constructor(private readonly socket: Socket, readonly address: string, private readonly timeout: number) {
    this.outbox = new Outbox(socket);
    this.ended = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('error', () => undefined);
    socket.once('close', () => this.drop(new RpcmigError('UNKNOWN_OUTCOME', `the connection to ${address} was lost`)));
    readMessages(socket, {
      onValue: (value) => this.receive(value),
      onFatal: (error) => this.broken(error.message),
    });
  }

  call(method: string, params: unknown[]): Promise<unknown> {
    if (this.lost || this.socket.destroyed) {
      return Promise.reject(notSent(this.lost ?? new RpcmigError('UNKNOWN_OUTCOME', `the connection to ${this.address} was lost`), method));
    }
    const id = this.allocate();
    const promise = new Promise(park);
    this.pending.set(id, { method, deadline: Date.now() + this.timeout, resolve: parkedResolve, reject: parkedReject });
    try {
      this.outbox.send([REQUEST, id, method, params]);
    } catch (error) {
      this.pending.delete(id);
      parkedReject(new RpcmigError('BAD_REQUEST', `the params of ${method} cannot be encoded: ${(error as Error).message}`));
    }
    if (this.timer === undefined) this.arm();
    return promise;
  }

  /** The reply to call `id` (the one place a reply is handled). */
  private settle(id: number, error: WireError | null, result: unknown): void {
    const call = this.pending.get(id);
    if (call === undefined) return; // it timed out already
    this.pending.delete(id);
    if (error === null || error === undefined) call.resolve(result);
    else call.reject(RpcmigError.fromWire(error));
  }

  private receive(value: unknown): void {
    const message = validate(value);
    if (!Array.isArray(message)) return this.broken(message.bad);
    if (message[0] === RESPONSE) return this.settle(message[1], message[2], message[3]);
    // The protocol lets a server notify or ask its client; this client has nothing to answer.
    if (message[0] === REQUEST) {
      this.outbox.send([RESPONSE, message[1], { code: 'NO_SUCH_METHOD', message: 'an rpcmig client serves no procedures' }, null]);
    }
  }

  /** Skips ids still in flight, so a wrapped counter never reuses a live one. */
  private allocate(): number {
    let id = this.nextId;
    while (this.pending.has(id)) id = id === MAX_MSGID ? 0 : id + 1;
    this.nextId = id === MAX_MSGID ? 0 : id + 1;
    return id;
  }

  /** One timer for all calls: deadlines grow in sending order, so it waits for the oldest. */
  private arm(): void {
    this.timer = undefined;
    const now = Date.now();
    for (const [id, call] of this.pending) {
      if (call.deadline > now) {
        if (Number.isFinite(call.deadline)) this.timer = setTimeout(() => this.arm(), call.deadline - now);
        return;
      }
      this.pending.delete(id);
      call.reject(new RpcmigError('TIMEOUT', `${call.method} got no reply from ${this.address} within ${this.timeout} ms; it may have run`));
    }
  }

  private broken(reason: string): void {
    this.drop(new RpcmigError('UNKNOWN_OUTCOME', `${this.address} sent something that is not a MessagePack-RPC reply (${reason})`));
    this.socket.destroy();
  }

  /** The connection is gone: every call sent on it may or may not have run. */
  private drop(cause: RpcmigError): void {
    this.lost ??= cause;
    clearTimeout(this.timer);
    for (const call of this.pending.values()) {
      const { code } = this.lost;
      call.reject(new RpcmigError(code, `${this.lost.message} after ${call.method} was sent; it may or may not have run (not resent)`));
    }
    this.pending.clear();
  }

  close(): Promise<void> {
    this.drop(new RpcmigError('CLOSED', `the client of ${this.address} was closed`));
    this.outbox.flush();
    this.socket.end();
    // A server that never hangs up its side must not keep close() waiting.
    setTimeout(() => this.socket.destroy(), LINGER_MS).unref();
    return this.ended;
  }
}

function notSent(lost: RpcmigError, method: string): RpcmigError {
  const code = lost.code === 'CLOSED' ? 'CLOSED' : 'CONNECTION_FAILED';
  return new RpcmigError(code, `${method} was not sent: ${lost.message}`);
}

const channels = new WeakMap<object, Channel>();

/** The typed proxy: any name but `then` and `close` is a remote procedure. */
function proxy<T>(channel: Channel): Client<T> {
  const methods = new Map<string, (...params: unknown[]) => Promise<unknown>>();
  const close = () => channel.close();
  const client = new Proxy(Object.create(null) as object, {
    get(_target, key) {
      if (typeof key !== 'string' || key === 'then') return undefined;
      if (key === 'close') return close;
      let method = methods.get(key);
      if (method === undefined) {
        method = (...params: unknown[]) => channel.call(key, params);
        methods.set(key, method);
      }
      return method;
    },
  });
  channels.set(client, channel);
  return client as Client<T>;
}

/** Calls any procedure by name, including those the proxy reserves (`close`, `then`). */
export function invoke<T, K extends keyof T & string>(
  client: Client<T>,
  method: K,
  ...params: T[K] extends (...params: infer P) => unknown ? P : never
): Promise<T[K] extends (...params: never[]) => infer R ? Awaited<R> : never> {
  const channel = channels.get(client);
  if (channel === undefined) return Promise.reject(new TypeError('invoke() takes a client made by connect()'));
  return channel.call(method, params) as Promise<T[K] extends (...params: never[]) => infer R ? Awaited<R> : never>;
}

function openSocket(host: string, port: number, timeout: number): Promise<Socket> {
  const address = formatAddress({ host, port });
  return new Promise((resolve, reject) => {
    const socket = connectSocket({ host, port, noDelay: true });
    const fail = (why: string) => {
      socket.destroy();
      reject(new RpcmigError('CONNECTION_FAILED', `cannot connect to ${address} (${why})`));
    };
    const timer = setTimeout(() => fail(`no connection within ${timeout} ms`), timeout);
    socket.once('error', (error: NodeJS.ErrnoException) => fail(error.code ?? error.message));
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      resolve(socket);
    });
  });
}

/** Asks the daemon where `name` is served: `{ name, address }`, or NO_SUCH_SERVER. */
async function lookup(name: string, options: NamedOptions): Promise<string> {
  const daemon = options.daemon ?? process.env.RPCMIG_DAEMON ?? '127.0.0.1:4111';
  const link = await openDaemon(daemon, loadKey(options.keyFile), { timeout: options.timeout });
  try {
    const found = (await link.call('lookup', [name])) as { address?: unknown };
    if (typeof found?.address !== 'string') throw new RpcmigError('PROTOCOL_ERROR', `the daemon at ${daemon} answered lookup without an address`);
    return found.address;
  } finally {
    link.close();
  }
}

/** A client of the server `name`, found through its daemon. */
export function connect<T extends object>(name: string, options?: NamedOptions): Promise<Client<T>>;
/** A client of the server at `host:port`. */
export function connect<T extends object>(target: DirectTarget): Promise<Client<T>>;
export async function connect<T extends object>(target: string | DirectTarget, options: NamedOptions = {}): Promise<Client<T>> {
  const where = typeof target === 'string' ? parseAddress(await lookup(target, options), 0) : target;
  const timeout = (typeof target === 'string' ? options.timeout : target.timeout) ?? DEFAULT_TIMEOUT;
  const socket = await openSocket(where.host, where.port, Math.min(timeout, DEFAULT_TIMEOUT));
  return proxy<T>(new Channel(socket, formatAddress(where), timeout));
}
