// The client behind `connect()`: a typed proxy over one pipelined MessagePack-RPC connection
// that follows its server when it moves (DESIGN §3 step 7, the paper's (a)-(d)). A reply of
// MOVED switches the connection to the new address — retrying while the new server is not
// up — and sends the call again there; MIGRATING sends it again after a back-off. Every call
// carries the client's id (its hello) and a number of its own, so a call whose connection was
// lost is sent again under the same number until its deadline, and the server answers it
// from its completion record if it ran: each call runs exactly once.
import { connect as connectSocket, type Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { Channel, type ChannelHooks, type Pending } from './channel.js';
import { HELLO } from './records.js';
import { RpcmigError, type WireError } from './errors.js';
import { formatAddress, loadKey, openDaemon, parseAddress } from './daemonlink.js';

export interface CallOptions {
  /** Milliseconds each call (and connecting) may take before TIMEOUT; default 30 s. */
  timeout?: number;
  /**
   * Default true: calls carry the client's id and number, a call whose connection was lost is
   * sent again until its deadline, and the server answers a repeat from its completion
   * record. false: no id, and such a call fails UNKNOWN_OUTCOME (it may or may not have run).
   */
  exactlyOnce?: boolean;
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
/** Times one call is sent again after losing its connection (its deadline bounds it too). */
const MAX_RESENDS = 64;
const FIRST_RETRY_MS = 5;
const LAST_RETRY_MS = 250;
/** A client that lost its server asks where it is again this often, and at most this many times. */
const RELOCATE_MS = 1000;
const MAX_RELOCATES = 1000;
/** How often (in calls) a client acknowledges the outcomes it has, so the server may drop them. */
const ACK_EVERY = 256;
const MAX_SEQ = 0xffffffff;

function newClientId(): string {
  return randomBytes(12).toString('base64url');
}

/** The server's current connection, replaced when the server moves or the connection is lost. */
class Follower {
  private channel: Channel;
  private moving: { to: string; next: Promise<Channel> } | undefined;
  private closed = false;
  private id = newClientId();
  /** The newest epoch a redirect has taken this client to; older redirects are not followed. */
  private epoch = -1;
  private seq = 0;
  /** Channels that may still have calls in flight: the current one, and old ones draining. */
  private readonly channels = new Set<Channel>();
  /** Calls between channels: redirected or orphaned, not yet sent again. */
  private readonly limbo = new Set<Pending>();
  private readonly hooks: ChannelHooks;

  constructor(
    socket: Socket,
    address: string,
    private readonly timeout: number,
    /** Where the server is now, asked of its daemon; for a direct client, its last address. */
    private readonly locate: () => Promise<string>,
    exactlyOnce: boolean,
  ) {
    const reroute = (call: Pending, error: WireError) => this.reroute(call, error);
    this.hooks = !exactlyOnce ? { reroute } : {
      reroute,
      orphaned: (calls, cause) => this.orphaned(calls, cause),
      sequence: () => this.sequence(),
      hello: () => [this.id, this.lowest()],
    };
    this.channel = this.track(new Channel(socket, address, timeout, this.hooks));
  }

  private track(channel: Channel): Channel {
    this.channels.add(channel);
    void channel.ended.then(() => this.channels.delete(channel));
    return channel;
  }

  private open(address: string, deadline: number): Promise<Channel> {
    const where = parseAddress(address, 0);
    return openRetrying(where.host, where.port, deadline).then((socket) => this.track(new Channel(socket, formatAddress(where), this.timeout, this.hooks)));
  }

  call(method: string, params: unknown[]): Promise<unknown> {
    // Every ACK_EVERY calls the server learns which outcomes it may forget.
    if ((this.seq & (ACK_EVERY - 1)) === 0 && this.seq > 0 && this.hooks.hello) this.channel.notify(HELLO, this.hooks.hello());
    if (this.channel.usable || this.closed) return this.channel.call(method, params);
    return this.reconnect().then((channel) => channel.call(method, params));
  }

  /** The next call's number; past 2^32 - 1 calls the client takes a new id and starts again. */
  private sequence(): number {
    if (this.seq > MAX_SEQ) {
      this.id = newClientId();
      this.seq = 0;
    }
    return this.seq++;
  }

  /** Every call below this number has its outcome, so the server may forget it. */
  private lowest(): number {
    let lowest = this.seq;
    for (const call of this.limbo) lowest = Math.min(lowest, call.seq);
    for (const channel of this.channels) lowest = Math.min(lowest, channel.lowest() ?? lowest);
    return lowest;
  }

  /** A call leaves its channel to be sent again: it counts as outstanding until it is. */
  private resend(call: Pending, next: Promise<Channel>): void {
    this.limbo.add(call);
    next.then((channel) => {
      this.limbo.delete(call);
      channel.adopt(call);
    }, (error: Error) => this.fail(call, error));
  }

  /** Ends a call with an error outside any channel. */
  private fail(call: Pending, error: Error): void {
    this.limbo.delete(call);
    call.reject(error);
  }

  /**
   * The connection was lost with these calls unanswered: each may or may not have run, so each
   * is sent again, under its number, wherever the server is now, until its deadline.
   */
  private orphaned(calls: Pending[], cause: RpcmigError): void {
    for (const call of calls) {
      const unknown = (why: string) => this.fail(call, new RpcmigError('UNKNOWN_OUTCOME', `${cause.message} after ${call.method} was sent; ${why}; it may or may not have run`));
      if (this.closed) unknown('the client was closed');
      else if (++call.resends > MAX_RESENDS) unknown(`sent ${MAX_RESENDS} times without an answer`);
      else if (Date.now() >= call.deadline) unknown('its deadline passed');
      else this.resend(call, this.current(call.deadline, true).catch((error: Error) => {
        throw new RpcmigError('UNKNOWN_OUTCOME', `${cause.message} after ${call.method} was sent; no server could be reached again (${error.message}); it may or may not have run`);
      }));
    }
  }

  close(): Promise<void> {
    this.closed = true;
    return this.channel.close();
  }

  /** A reply said the call was not executed: send it again, where and when the reply says. */
  private reroute(call: Pending, error: WireError): void {
    if (++call.hops > MAX_HOPS) return this.fail(call, new RpcmigError('MOVED', `${call.method} was redirected more than ${MAX_HOPS} times; not executed`));
    if (this.closed) return this.fail(call, new RpcmigError('CLOSED', `the client was closed before ${call.method} was sent again`));
    if (error.code === 'MIGRATING') {
      const wait = Math.min(LAST_RETRY_MS, FIRST_RETRY_MS << call.hops);
      this.resend(call, new Promise((resolve) => setTimeout(resolve, wait)).then(() => this.current(call.deadline)));
      return;
    }
    if (typeof error.to !== 'string') return this.fail(call, RpcmigError.fromWire(error));
    const epoch = typeof error.epoch === 'number' ? error.epoch : undefined;
    if (epoch !== undefined && epoch <= this.epoch) {
      // A redirect to an older epoch than one followed already is stale: ask where the server is.
      this.resend(call, this.locate().then((address) => this.follow(address, call.deadline)));
      return;
    }
    if (epoch !== undefined) this.epoch = epoch;
    this.resend(call, this.follow(error.to, call.deadline));
  }

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

  private current(deadline: number, patient = false): Promise<Channel> {
    return this.channel.usable ? Promise.resolve(this.channel) : this.moving?.next ?? this.reconnect(deadline, patient);
  }

  /**
   * The connection was lost: find the server again. `patient`: calls are waiting for it, so
   * keep trying until their deadline; else a new call fails fast when nothing answers.
   */
  private reconnect(deadline = Date.now() + this.timeout, patient = false): Promise<Channel> {
    if (this.moving) return this.moving.next;
    const until = patient ? deadline : Math.min(deadline, Date.now() + LAST_RETRY_MS);
    const next = this.findAgain(until).then((channel) => this.switchTo(channel));
    const where = this.channel.address;
    this.moving = { to: where, next };
    next.catch(() => undefined).finally(() => this.moving?.next === next && (this.moving = undefined));
    return next;
  }

  /**
   * Asks where the server is and connects there. While nothing answers, asks again every
   * RELOCATE_MS: the server may have moved meanwhile, or its daemon may not know it yet (the
   * paper's client "retrying until it was up").
   */
  private async findAgain(until: number): Promise<Channel> {
    for (let round = 0; ; round++) {
      try {
        return await this.open(await this.locate(), Math.min(until, Date.now() + RELOCATE_MS));
      } catch (error) {
        const wait = Math.min(LAST_RETRY_MS, FIRST_RETRY_MS << Math.min(round, 10));
        if (Date.now() + wait >= until || round >= MAX_RELOCATES) throw error;
        await new Promise((resolve) => setTimeout(resolve, wait));
      }
    }
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
  const exactlyOnce = (typeof target === 'string' ? options.exactlyOnce : target.exactlyOnce) ?? true;
  return proxy<T>(new Follower(socket, formatAddress(where), timeout, locate, exactlyOnce));
}
