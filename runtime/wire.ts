// MessagePack-RPC on a byte stream (the msgpack-rpc specification): message shapes, one
// encoder, one decoder that carries partial messages across TCP chunks (msgpackr's
// UnpackrStream), and one batched writer. Servers, clients and daemons all frame through here.
import type { Socket } from 'node:net';
import { UnpackrStream, type Options, type Unpackr } from 'msgpackr';
import type { WireError } from './errors.js';
import { createWirePackr, createWireUnpackr, tagMaps } from './wirecodec.js';

export const REQUEST = 0;
export const RESPONSE = 1;
export const NOTIFICATION = 2;

export type Request = [typeof REQUEST, number, string, unknown[]];
export type Response = [typeof RESPONSE, number, WireError | null, unknown];
export type Notification = [typeof NOTIFICATION, string, unknown[]];
export type Message = Request | Response | Notification;

/** Largest message a peer may send before its connection is closed (DESIGN §6). */
export const DEFAULT_MAX_FRAME = 64 * 1024 * 1024;

const MAX_MSGID = 0xffffffff;

/** Every outgoing message is packed here; each connection decodes with its own unpackr. */
const packr = createWirePackr();

export function encode(message: Message): Buffer {
  return packr.pack(tagMaps(message));
}

/** The msgid of a message, when it is one a reply can carry. */
function msgidOf(value: unknown): number | undefined {
  return Number.isInteger(value) && (value as number) >= 0 && (value as number) <= MAX_MSGID ? (value as number) : undefined;
}

/**
 * Checks the shape of a decoded value. Returns the message, or a reason it is not one; the
 * msgid is returned when it can be read, so a BAD_REQUEST can still be answered.
 */
export function validate(value: unknown): Message | { bad: string; msgid?: number } {
  if (!Array.isArray(value)) return { bad: 'a message must be an array' };
  const type: unknown = value[0];
  const msgid = msgidOf(value[1]);
  if (type === REQUEST) {
    if (value.length !== 4 || msgid === undefined) return { bad: 'a request is [0, msgid, method, params]', msgid };
    if (typeof value[2] !== 'string') return { bad: 'method must be a string', msgid };
    if (!Array.isArray(value[3])) return { bad: 'params must be an array', msgid };
    return value as Request;
  }
  if (type === RESPONSE) {
    if (value.length !== 4 || msgid === undefined) return { bad: 'a response is [1, msgid, error, result]' };
    return value as Response;
  }
  if (type === NOTIFICATION) {
    if (value.length !== 3 || typeof value[1] !== 'string' || !Array.isArray(value[2])) {
      return { bad: 'a notification is [2, method, params]' };
    }
    return value as Notification;
  }
  return { bad: `unknown message type ${JSON.stringify(type) ?? typeof type}`, msgid };
}

export interface FramingHandlers {
  /** A decoded value, not yet validated (see `validate`). */
  onValue(value: unknown): void;
  /** The byte stream cannot be read any further (garbage, or a message over the limit). */
  onFatal(error: Error): void;
}

/** How msgpackr's streams stand for a top-level nil (a pushed null would end the stream). */
const NIL = Symbol.for('null');

/**
 * msgpackr's UnpackrStream driven by hand: its _transform carries partial messages across
 * chunks; feeding it straight from the socket's 'data' events, and taking values from push,
 * skips two stream buffers and an event per message.
 */
class MessageReader extends UnpackrStream {
  failed = false;

  constructor(options: Options, private readonly handlers: FramingHandlers, private readonly maxFrame: number) {
    super(options);
  }

  override push(value: unknown): boolean {
    if (this.failed) return true;
    try {
      this.handlers.onValue(value === NIL ? null : value);
    } catch (error) {
      // A handler's bug ends this connection, not the process: this runs in a socket event.
      this.done(error instanceof Error ? error : new Error(String(error)));
    }
    return true;
  }

  feed(chunk: Buffer): void {
    if (!this.failed) this._transform(chunk, 'buffer' as BufferEncoding, this.done);
  }

  finish(): void {
    if (!this.failed) this._flush(this.done);
  }

  private readonly done = (error?: Error | null): void => {
    if (!error || this.failed) return;
    this.failed = true;
    this.handlers.onFatal(new Error(explain(error, this.maxFrame)));
  };
}

/** msgpackr's reasons, in the words of the protocol (for logs and errors). */
function explain(error: Error, maxFrame: number): string {
  if (/incomplete buffer size/i.test(error.message)) return `a message larger than the ${maxFrame}-byte limit`;
  if ((error as { incomplete?: boolean }).incomplete) return 'the stream ended inside a message';
  return `not MessagePack (${error.message})`;
}

/**
 * Feeds every chunk the socket receives through one decoder. Values are delivered in order;
 * a fatal decode error, an oversized message or a message cut short by the end of the stream
 * ends the reading for good. Resumes the socket (a handshake may have left it paused).
 */
export function readMessages(socket: Socket, handlers: FramingHandlers, maxFrame = DEFAULT_MAX_FRAME): void {
  // UnpackrStream takes its decoder as `unpackr`, which msgpackr's typings do not list.
  const options: Options & { unpackr: Unpackr } = { unpackr: createWireUnpackr(), maxIncompleteBufferSize: maxFrame };
  const reader = new MessageReader(options, handlers, maxFrame);
  socket.on('data', (chunk: Buffer) => reader.feed(chunk));
  socket.on('end', () => reader.finish());
  socket.resume();
}

/**
 * Messages queued for one socket leave together: once per tick (replies produced by one
 * incoming chunk, and by the promises settled in that tick, in one write), or as soon as
 * BATCH are queued, so that the peer starts on the first ones while the rest are produced
 * (measured with 64 calls in flight: 1.5-2x the calls/s of one write per tick).
 */
const BATCH = 16;

export class Outbox {
  private readonly queue: Buffer[] = [];
  private scheduled = false;

  constructor(private readonly socket: Socket) {}

  send(message: Message): void {
    if (this.queue.push(encode(message)) >= BATCH) this.flush();
    else if (!this.scheduled) {
      this.scheduled = true;
      process.nextTick(flushOutbox, this);
    }
  }

  /** Writes what is queued now; true when the socket's buffer has room for more. */
  flush(): boolean {
    const queue = this.queue;
    if (queue.length === 0 || this.socket.destroyed) return (queue.length = 0, true);
    const bytes = queue.length === 1 ? queue[0] : Buffer.concat(queue);
    queue.length = 0;
    return this.socket.write(bytes);
  }

  /** The once-per-tick flush. */
  tick(): void {
    this.scheduled = false;
    this.flush();
  }
}

function flushOutbox(outbox: Outbox): void {
  outbox.tick();
}
