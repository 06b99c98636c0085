// MessagePack-RPC on a byte stream (the msgpack-rpc specification): message shapes, one
// encoder, and one decoder that carries partial messages across TCP chunks (msgpackr's
// UnpackrStream). Servers, clients and daemons all frame through here.
import type { Socket } from 'node:net';
import { Packr, UnpackrStream } from 'msgpackr';
import type { WireError } from './errors.js';

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

/** One Packr for every outgoing message: plain MessagePack that any client can read. */
const packr = new Packr({ useRecords: false, moreTypes: false });

export function encode(message: Message): Buffer {
  return packr.pack(message);
}

/**
 * Checks the shape of a decoded value. Returns the message, or a reason it is not one; the
 * msgid is returned when it can be read, so a BAD_REQUEST can still be answered.
 */
export function validate(value: unknown): Message | { bad: string; msgid?: number } {
  if (!Array.isArray(value)) return { bad: 'a message must be an array' };
  const [type, a, b, c] = value;
  const msgid = Number.isInteger(a) && a >= 0 && a <= MAX_MSGID ? (a as number) : undefined;
  if (type === REQUEST) {
    if (value.length !== 4 || msgid === undefined) return { bad: 'a request is [0, msgid, method, params]', msgid };
    if (typeof b !== 'string') return { bad: 'method must be a string', msgid };
    if (!Array.isArray(c)) return { bad: 'params must be an array', msgid };
    return value as Request;
  }
  if (type === RESPONSE) {
    if (value.length !== 4 || msgid === undefined) return { bad: 'a response is [1, msgid, error, result]' };
    return value as Response;
  }
  if (type === NOTIFICATION) {
    if (value.length !== 3 || typeof a !== 'string' || !Array.isArray(b)) {
      return { bad: 'a notification is [2, method, params]' };
    }
    return value as Notification;
  }
  return { bad: `unknown message type ${JSON.stringify(type)}`, msgid };
}

export interface FramingHandlers {
  /** A decoded value, not yet validated (see `validate`). */
  onValue(value: unknown): void;
  /** The byte stream cannot be read any further (garbage, or a message over the limit). */
  onFatal(error: Error): void;
}

/**
 * Feeds every chunk the socket receives through one UnpackrStream. Values are delivered in
 * order; a fatal decode error or an oversized message ends the reading for good.
 */
export function readMessages(socket: Socket, handlers: FramingHandlers, maxFrame = DEFAULT_MAX_FRAME): void {
  const stream = new UnpackrStream({ useRecords: false, maxIncompleteBufferSize: maxFrame });
  let failed = false;
  stream.on('data', (value: unknown) => {
    if (!failed) handlers.onValue(value === Symbol.for('null') ? null : value);
  });
  stream.on('error', (error: Error) => {
    if (failed) return;
    failed = true;
    socket.unpipe(stream);
    handlers.onFatal(error);
  });
  socket.pipe(stream);
}
