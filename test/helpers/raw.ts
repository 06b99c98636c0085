// A raw MessagePack-RPC peer built from node:net and msgpackr alone (not the project's client
// or wire.ts), so that tests check the server against the specification, not against itself.
// Given the cluster key it first passes a daemon's handshake (tested on its own), so that
// tests can send a daemon what its own link never would.
import { connect, type Socket } from 'node:net';
import { Packr, UnpackrStream } from 'msgpackr';
import { offerHandshake } from '../../runtime/handshake.js';

const packr = new Packr({ useRecords: false });

export interface Raw {
  readonly socket: Socket;
  /** Sends one value as one MessagePack object. */
  send(value: unknown): void;
  /** Sends bytes as they are. */
  write(bytes: Buffer | Uint8Array): void;
  /** The next value the peer sends, within `timeout` ms. */
  next(timeout?: number): Promise<unknown>;
  /** Resolves true when the peer closes the connection within `timeout` ms. */
  closedWithin(timeout?: number): Promise<boolean>;
  close(): void;
}

class RawPeer implements Raw {
  private readonly received: unknown[] = [];
  private readonly waiting: Array<(value: unknown) => void> = [];
  private readonly closeWaiters: Array<() => void> = [];
  private closed = false;

  constructor(readonly socket: Socket) {
    const stream = new UnpackrStream({ useRecords: false });
    stream.on('data', (value: unknown) => this.deliver(value === Symbol.for('null') ? null : value));
    stream.on('error', () => socket.destroy());
    socket.pipe(stream);
    socket.on('error', () => undefined);
    socket.on('close', () => {
      this.closed = true;
      this.closeWaiters.splice(0).forEach((done) => done());
    });
  }

  private deliver(value: unknown): void {
    const waiter = this.waiting.shift();
    if (waiter) waiter(value);
    else this.received.push(value);
  }

  send(value: unknown): void {
    this.socket.write(packr.pack(value));
  }

  write(bytes: Buffer | Uint8Array): void {
    this.socket.write(bytes);
  }

  next(timeout = 5000): Promise<unknown> {
    if (this.received.length > 0) return Promise.resolve(this.received.shift());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no message within ${timeout} ms`)), timeout);
      this.waiting.push((value) => (clearTimeout(timer), resolve(value)));
    });
  }

  closedWithin(timeout = 5000): Promise<boolean> {
    if (this.closed) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeout);
      this.closeWaiters.push(() => (clearTimeout(timer), resolve(true)));
    });
  }

  close(): void {
    this.socket.destroy();
  }
}

/** Connects to `address`; with `key`, passes the daemon's handshake before reading anything. */
export async function openRaw(address: string, key?: Buffer): Promise<Raw> {
  const colon = address.lastIndexOf(':');
  const socket = connect({ host: address.slice(0, colon), port: Number(address.slice(colon + 1)) });
  await new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  socket.on('error', () => undefined);
  if (key) {
    try {
      await offerHandshake(socket, key, address);
    } catch (error) {
      socket.destroy();
      throw error;
    }
  }
  return new RawPeer(socket);
}

/** Sends a request and returns the response with the same msgid (other messages are dropped). */
export async function request(raw: Raw, msgid: number, method: string, params: unknown[]): Promise<unknown[]> {
  raw.send([0, msgid, method, params]);
  for (let count = 0; count < 1000; count++) {
    const message = (await raw.next()) as unknown[];
    if (Array.isArray(message) && message[0] === 1 && message[1] === msgid) return message;
  }
  throw new Error(`no response to msgid ${msgid}`);
}
