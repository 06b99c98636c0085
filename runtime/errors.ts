// RpcmigError and its codes: the contract codes of DESIGN §5 travel on the wire as
// `{ code, message, ... }`; the client-side codes describe failures no server reported.

/** Codes a server puts in a MessagePack-RPC error reply (DESIGN §5). */
export const WIRE_CODES = ['MOVED', 'MIGRATING', 'NO_SUCH_METHOD', 'BAD_REQUEST', 'APP_ERROR'] as const;

/** Codes a daemon puts in an error reply to its peers (name service). */
export const DAEMON_CODES = [
  'NO_SUCH_SERVER', // the daemon knows no server of that name
  'NAME_TAKEN', // another live server is registered under that name
  'TRANSFER_REFUSED', // a shipped program (manifest, blob or tree) was refused; `path` or `hash` names it
  'MIGRATION_FAILED', // a migration did not complete; `step` names where it failed, the server serves on at the source
] as const;

/** Codes raised on the calling side (client, CLI, daemon peers). */
export const LOCAL_CODES = [
  'UNKNOWN_OUTCOME', // the call was sent, the connection broke before its reply: it may have run
  'TIMEOUT', // no reply within the call's time-out; it may have run
  'CONNECTION_FAILED', // could not connect (nothing was sent)
  'CLOSED', // the client was closed before the call completed or was sent
  'NO_DAEMON', // no daemon answered at the address
  'AUTH_FAILED', // the handshake with a daemon failed (wrong or missing key)
  'PROTOCOL_ERROR', // the peer sent something that is not MessagePack-RPC
] as const;

export type WireCode = (typeof WIRE_CODES)[number];
export type DaemonCode = (typeof DAEMON_CODES)[number];
export type LocalCode = (typeof LOCAL_CODES)[number];
export type ErrorCode = WireCode | DaemonCode | LocalCode;

const REPLY_CODES: readonly string[] = [...WIRE_CODES, ...DAEMON_CODES];

/** The error map carried in a response: `{ code, message, ...details }`. */
export interface WireError {
  code: string;
  message: string;
  [detail: string]: unknown;
}

export class RpcmigError extends Error {
  readonly code: ErrorCode;
  readonly details: Readonly<Record<string, unknown>>;

  constructor(code: ErrorCode, message: string, details: Record<string, unknown> = {}) {
    super(message);
    this.name = 'RpcmigError';
    this.code = code;
    this.details = details;
  }

  /** The map sent on the wire for this error. */
  toWire(): WireError {
    return { ...this.details, code: this.code, message: this.message };
  }

  /** An error received on the wire; an unknown code becomes APP_ERROR with `remoteCode`. */
  static fromWire(error: unknown): RpcmigError {
    if (typeof error === 'object' && error !== null && !Array.isArray(error)) {
      const { code, message, ...details } = error as Record<string, unknown>;
      const known = typeof code === 'string' && REPLY_CODES.includes(code);
      const text = typeof message === 'string' ? message : String(message ?? 'error');
      return new RpcmigError(known ? (code as WireCode | DaemonCode) : 'APP_ERROR', text, known ? details : { ...details, remoteCode: code });
    }
    return new RpcmigError('APP_ERROR', String(error));
  }
}
