// One connection to one server: calls in flight keyed by msgid, sent through one Outbox and
// settled in one place. A reply saying the call was not executed (MOVED, MIGRATING) goes to
// the `reroute` hook, which sends the same call again elsewhere; calls whose connection was
// lost go to the `orphaned` hook, which resends them under the same msgid (the server answers
// a resent call from its completion record). Without hooks, neither is retried.
import type { Socket } from 'node:net';
import { RpcmigError, type WireError } from './errors.js';
import { HELLO } from './records.js';
import { NOTIFICATION, Outbox, readMessages, REQUEST, RESPONSE, validate } from './wire.js';

export interface ChannelHooks {
  /** A reply said the call was not executed (MOVED, MIGRATING). */
  reroute?(call: Pending, error: WireError): void;
  /** The connection was lost with these calls unanswered: their outcome is unknown. */
  orphaned?(calls: Pending[], cause: RpcmigError): void;
  /** The msgid of a new call, when the client numbers its calls across connections. */
  sequence?(): number;
  /** The params of the hello sent first on the connection: [clientId, below]. */
  hello?(): unknown[];
}

const MAX_MSGID = 0xffffffff;
const LINGER_MS = 1000;

export interface Pending {
  /** The call's number across the client's connections; -1: the channel numbers it. */
  seq: number;
  method: string;
  params: unknown[];
  deadline: number;
  /** Redirects followed so far. */
  hops: number;
  /** Times sent again after its connection was lost. */
  resends: number;
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

export class Channel {
  private readonly pending = new Map<number, Pending>();
  private readonly outbox: Outbox;
  private nextId = 0;
  private timer: NodeJS.Timeout | undefined;
  private lost: RpcmigError | undefined;
  /** Resolves once the connection is closed. */
  readonly ended: Promise<void>;
  private retiring = false;

  constructor(
    private readonly socket: Socket,
    readonly address: string,
    private readonly timeout: number,
    private readonly hooks: ChannelHooks = {},
  ) {
    this.outbox = new Outbox(socket);
    if (hooks.hello) this.outbox.send([NOTIFICATION, HELLO, hooks.hello()]);
    this.ended = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('error', () => undefined);
    socket.once('close', () => this.drop(new RpcmigError('UNKNOWN_OUTCOME', `the connection to ${address} was lost`)));
    readMessages(socket, {
      onValue: (value) => this.receive(value),
      onFatal: (error) => this.broken(error.message),
    });
  }

  /** False once the connection is lost or closed: a new call needs a new channel. */
  get usable(): boolean {
    return this.lost === undefined && !this.socket.destroyed && !this.retiring;
  }

  call(method: string, params: unknown[]): Promise<unknown> {
    if (this.lost || this.socket.destroyed) {
      return Promise.reject(notSent(this.lost ?? new RpcmigError('UNKNOWN_OUTCOME', `the connection to ${this.address} was lost`), method));
    }
    const promise = new Promise(park);
    const seq = this.hooks.sequence ? this.hooks.sequence() : -1;
    this.send({ seq, method, params, deadline: Date.now() + this.timeout, hops: 0, resends: 0, resolve: parkedResolve, reject: parkedReject });
    return promise;
  }

  /** Sends a call that was not executed elsewhere, keeping its deadline and its promise. */
  adopt(call: Pending): void {
    if (this.lost || this.socket.destroyed) return this.fail(call, notSent(this.lost ?? new RpcmigError('UNKNOWN_OUTCOME', `the connection to ${this.address} was lost`), call.method));
    this.send(call);
  }

  /** Ends a call with an error (every failure of a call passes here). */
  private fail(call: Pending, error: Error): void {
    call.reject(error);
  }

  /** The lowest msgid still waiting for its reply here, if any. */
  lowest(): number | undefined {
    let lowest: number | undefined;
    for (const id of this.pending.keys()) if (lowest === undefined || id < lowest) lowest = id;
    return lowest;
  }

  /** A notification; nothing comes back. */
  notify(method: string, params: unknown[]): void {
    if (this.usable) this.outbox.send([NOTIFICATION, method, params]);
  }

  private send(call: Pending): void {
    const id = call.seq >= 0 ? call.seq : this.allocate();
    this.pending.set(id, call);
    try {
      this.outbox.send([REQUEST, id, call.method, call.params]);
    } catch (error) {
      this.pending.delete(id);
      this.fail(call, new RpcmigError('BAD_REQUEST', `the params of ${call.method} cannot be encoded: ${(error as Error).message}`));
    }
    if (this.timer === undefined) this.arm();
  }

  /** Closes the connection once the calls on it are settled (the server moved). */
  retire(): void {
    this.retiring = true;
    if (this.pending.size === 0) void this.close();
  }

  /** The reply to call `id` (the one place a reply is handled). */
  private settle(id: number, error: WireError | null, result: unknown): void {
    const call = this.pending.get(id);
    if (call === undefined) return; // it timed out already
    this.pending.delete(id);
    if (error === null || error === undefined) call.resolve(result);
    else if (this.hooks.reroute && (error.code === 'MOVED' || error.code === 'MIGRATING')) this.hooks.reroute(call, error);
    else this.fail(call, RpcmigError.fromWire(error));
    if (this.retiring && this.pending.size === 0) void this.close();
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
      this.fail(call, new RpcmigError('TIMEOUT', `${call.method} got no reply from ${this.address} within ${this.timeout} ms; it may have run`));
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
    if (this.hooks.orphaned && this.lost.code !== 'CLOSED' && this.pending.size > 0) {
      const calls = [...this.pending.values()];
      this.pending.clear();
      return this.hooks.orphaned(calls, this.lost);
    }
    for (const call of this.pending.values()) {
      const { code } = this.lost;
      this.fail(call, new RpcmigError(code, `${this.lost.message} after ${call.method} was sent; it may or may not have run (not resent)`));
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

