// The client behind `connect()`: a typed proxy over one pipelined MessagePack-RPC connection
// that follows its server when it moves (DESIGN §3 step 7, the paper's (a)-(d)). A reply of
// MOVED switches the connection to the new address — retrying while the new server is not
// up — and sends the call again there; MIGRATING sends it again after a back-off. Only
// calls the server says it did not execute are ever sent twice.
import { connect as connectSocket, type Socket } from 'node:net';
import { Channel, type Pending } from './channel.js';
import { RpcmigError, type WireError } from './errors.js';
import { formatAddress, loadKey, openDaemon, parseAddress } from './daemonlink.js';

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
/** Redirects one call may follow before it fails: a cycle or a runaway chain ends here. */
const MAX_HOPS = 8;
const FIRST_RETRY_MS = 5;
const LAST_RETRY_MS = 250;

/** The server's current connection, replaced when the server moves or the connection is lost. */
class Follower {
  private channel: Channel;
  private moving: { to: string; next: Promise<Channel> } | undefined;
  private closed = false;

  constructor(
    socket: Socket,
    address: string,
    private readonly timeout: number,
    /** Where the server is now, asked of its daemon; for a direct client, its last address. */
    private readonly locate: () => Promise<string>,
  ) {
    this.channel = new Channel(socket, address, timeout, this.reroute);
  }

  private open(address: string, deadline: number): Promise<Channel> {
    const where = parseAddress(address, 0);
    return openRetrying(where.host, where.port, deadline).then((socket) => new Channel(socket, formatAddress(where), this.timeout, this.reroute));
  }

  call(method: string, params: unknown[]): Promise<unknown> {
    if (this.channel.usable || this.closed) return this.channel.call(method, params);
    return this.reconnect().then((channel) => channel.call(method, params));
  }

  close(): Promise<void> {
    this.closed = true;
    return this.channel.close();
  }

  /** A reply said the call was not executed: send it again, where and when the reply says. */
  private readonly reroute = (call: Pending, error: WireError): void => {
    if (++call.hops > MAX_HOPS) return call.reject(new RpcmigError('MOVED', `${call.method} was redirected more than ${MAX_HOPS} times; not executed`));
    if (this.closed) return call.reject(new RpcmigError('CLOSED', `the client was closed before ${call.method} was sent again`));
    if (error.code === 'MIGRATING') {
      const wait = Math.min(LAST_RETRY_MS, FIRST_RETRY_MS << call.hops);
      setTimeout(() => this.current(call.deadline).then((channel) => channel.adopt(call), call.reject), wait);
      return;
    }
    if (typeof error.to !== 'string') return call.reject(RpcmigError.fromWire(error));
    this.follow(error.to, call.deadline).then((channel) => channel.adopt(call), call.reject);
  };

  /** The channel to `to`: the current one if it is there already, else one being opened. */
  private follow(to: string, deadline: number): Promise<Channel> {
    let where: string;
    try {
      where = formatAddress(parseAddress(to, 0));
    } catch {
      return Promise.reject(new RpcmigError('PROTOCOL_ERROR', `the server said it moved to ${JSON.stringify(to)}, which is not an address`));
    }
    if (this.channel.address === where && this.channel.usable) return Promise.resolve(this.channel);
    if (this.moving?.to === where) return this.moving.next;
    const next = this.open(where, deadline).then((channel) => this.switchTo(channel));
    this.moving = { to: where, next };
    next.catch(() => undefined).finally(() => this.moving?.next === next && (this.moving = undefined));
    return next;
  }

  private current(deadline: number): Promise<Channel> {
    return this.channel.usable ? Promise.resolve(this.channel) : this.moving?.next ?? this.reconnect(deadline);
  }

  /** The connection was lost with nothing in flight: find the server again. */
  private reconnect(deadline = Date.now() + this.timeout): Promise<Channel> {
    if (this.moving) return this.moving.next;
    const next = this.locate().then((address) => this.open(address, Math.min(deadline, Date.now() + LAST_RETRY_MS))).then((channel) => this.switchTo(channel));
    const where = this.channel.address;
    this.moving = { to: where, next };
    next.catch(() => undefined).finally(() => this.moving?.next === next && (this.moving = undefined));
    return next;
  }

  private switchTo(channel: Channel): Channel {
    if (this.closed) {
      void channel.close();
      throw new RpcmigError('CLOSED', 'the client was closed');
    }
    const old = this.channel;
    this.channel = channel;
    old.retire();
    return channel;
  }
}

/** Connects, retrying with back-off until `deadline` while nothing listens (the new server is starting). */
async function openRetrying(host: string, port: number, deadline: number): Promise<Socket> {
  for (let attempt = 0; ; attempt++) {
    const left = deadline - Date.now();
    try {
      return await openSocket(host, port, Math.max(1, Math.min(left, DEFAULT_TIMEOUT)));
    } catch (error) {
      const wait = Math.min(LAST_RETRY_MS, FIRST_RETRY_MS << Math.min(attempt, 10));
      if (Date.now() + wait >= deadline || attempt >= 1000) throw error;
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }
}

const channels = new WeakMap<object, Follower>();

/** The typed proxy: any name but `then` and `close` is a remote procedure. */
function proxy<T>(channel: Follower): Client<T> {
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
  const timeout = (typeof target === 'string' ? options.timeout : target.timeout) ?? DEFAULT_TIMEOUT;
  let last = typeof target === 'string' ? await lookup(target, options) : formatAddress(target);
  const locate = typeof target === 'string' ? async () => (last = await lookup(target, options)) : async () => last;
  const where = parseAddress(last, 0);
  const socket = await openSocket(where.host, where.port, Math.min(timeout, DEFAULT_TIMEOUT));
  return proxy<T>(new Follower(socket, formatAddress(where), timeout, locate));
}
