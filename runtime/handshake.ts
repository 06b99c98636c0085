// The daemon handshake (DESIGN §6): before anything else on a daemon connection, both sides
// prove they hold the cluster key. One implementation, used by the daemon and by every peer.
//
// Fixed binary frames, so that nothing is parsed before the peer is authenticated. Every
// frame starts with an 8-byte header: "rpcmig", a kind byte, and the version byte 1.
//
//   daemon -> peer  HELLO   40 bytes  header 'H' | Nd (32 random bytes)
//   peer -> daemon  PROOF   72 bytes  header 'P' | Nc (32 random bytes) | HMAC(key, "rpcmig-client" ‖ Nd ‖ Nc)
//   daemon -> peer  ACCEPT  40 bytes  header 'A' | HMAC(key, "rpcmig-daemon" ‖ Nd ‖ Nc)
//               or  REFUSE  40 bytes  header 'R' | reason byte | 31 zero bytes; then the daemon closes
//
// HMAC is HMAC-SHA256 and is compared with crypto.timingSafeEqual. Nd is fresh on every
// connection, so a recorded PROOF is useless on another one; ACCEPT lets the peer check that
// the daemon holds the key too. The peer sends nothing after PROOF until the verdict, so more
// than 72 bytes before ACCEPT is a protocol violation (the pre-authentication frame limit).
// After ACCEPT both sides speak MessagePack-RPC (wire.ts). The handshake authenticates the
// two ends when the connection opens; it does not encrypt or sign the frames that follow.
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Socket } from 'node:net';
import { RpcmigError } from './errors.js';

const MAGIC = Buffer.from('rpcmig', 'latin1');
const VERSION = 1;
const HEADER_SIZE = 8;
const NONCE_SIZE = 32;
const MAC_SIZE = 32;
export const HELLO_SIZE = HEADER_SIZE + NONCE_SIZE;
export const PROOF_SIZE = HEADER_SIZE + NONCE_SIZE + MAC_SIZE;
export const VERDICT_SIZE = HEADER_SIZE + MAC_SIZE;
export const DEFAULT_HANDSHAKE_TIMEOUT = 5000;

type Kind = 'H' | 'P' | 'A' | 'R';

/** Why a daemon refused a peer; the byte travels in REFUSE, the text goes to the log. */
export const REFUSALS = {
  1: 'wrong key',
  2: 'not an rpcmig handshake',
  3: `sent more than the ${PROOF_SIZE}-byte handshake proof before the verdict`,
  4: 'handshake timed out',
  5: 'closed the connection during the handshake',
} as const;
export type RefusalCode = keyof typeof REFUSALS;

function header(kind: Kind): Buffer {
  return Buffer.concat([MAGIC, Buffer.from([kind.charCodeAt(0), VERSION])]);
}

function hasHeader(frame: Buffer, kind: Kind): boolean {
  return frame.length >= HEADER_SIZE && frame.subarray(0, HEADER_SIZE).equals(header(kind));
}

/** True as soon as the bytes so far cannot begin a `kind` frame: garbage is refused early. */
function cannotBe(bytes: Buffer, kind: Kind): boolean {
  const length = Math.min(bytes.length, HEADER_SIZE);
  return !bytes.subarray(0, length).equals(header(kind).subarray(0, length));
}

function mac(key: Buffer, label: string, nd: Buffer, nc: Buffer): Buffer {
  return createHmac('sha256', key).update(label).update(nd).update(nc).digest();
}

/**
 * Collects bytes from a socket until `judge` decides, or `onEnd` when the socket closes
 * first. A judge that accepts pauses the socket, so MessagePack-RPC reads from there on.
 */
function collect<T>(socket: Socket, judge: (bytes: Buffer) => T | undefined, onEnd: () => T): Promise<T> {
  return new Promise((resolve) => {
    let bytes = Buffer.alloc(0);
    const finish = (verdict: T) => {
      socket.off('data', onData).off('close', onClose);
      resolve(verdict);
    };
    const onData = (chunk: Buffer) => {
      bytes = Buffer.concat([bytes, chunk]);
      const verdict = judge(bytes);
      if (verdict !== undefined) finish(verdict);
    };
    const onClose = () => finish(onEnd());
    socket.on('data', onData).on('close', onClose);
  });
}

/** Runs within `timeout` ms, or settles with `onTimeout()`; the timer never outlives it. */
function within<T>(timeout: number, work: Promise<T>, onTimeout: () => T): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<T>((resolve) => { timer = setTimeout(() => resolve(onTimeout()), timeout); });
  return Promise.race([work, late]).finally(() => clearTimeout(timer));
}

type DaemonVerdict = { accepted: true } | { accepted: false; code: RefusalCode };

/**
 * The daemon's side. Resolves `{ accepted: true }` with the socket paused and ready for
 * MessagePack-RPC, or refuses: writes REFUSE, closes the socket and says why.
 */
export async function answerHandshake(socket: Socket, key: Buffer, timeout = DEFAULT_HANDSHAKE_TIMEOUT): Promise<DaemonVerdict> {
  const nd = randomBytes(NONCE_SIZE);
  socket.write(Buffer.concat([header('H'), nd]));
  const judge = (bytes: Buffer): DaemonVerdict | undefined => {
    if (cannotBe(bytes, 'P')) return { accepted: false, code: 2 };
    if (bytes.length > PROOF_SIZE) return { accepted: false, code: 3 };
    if (bytes.length < PROOF_SIZE) return undefined;
    const nc = bytes.subarray(HEADER_SIZE, HEADER_SIZE + NONCE_SIZE);
    const expected = mac(key, 'rpcmig-client', nd, nc);
    if (!timingSafeEqual(expected, bytes.subarray(HEADER_SIZE + NONCE_SIZE))) return { accepted: false, code: 1 };
    socket.pause();
    socket.write(Buffer.concat([header('A'), mac(key, 'rpcmig-daemon', nd, nc)]));
    return { accepted: true };
  };
  const closed: DaemonVerdict = { accepted: false, code: 5 };
  const verdict = await within(timeout, collect(socket, judge, () => closed), (): DaemonVerdict => ({ accepted: false, code: 4 }));
  if (!verdict.accepted) refuse(socket, verdict.code);
  return verdict;
}

function refuse(socket: Socket, code: RefusalCode): void {
  socket.pause();
  const frame = Buffer.alloc(VERDICT_SIZE);
  header('R').copy(frame);
  frame[HEADER_SIZE] = code;
  if (socket.writable) socket.end(frame);
  // A peer that keeps sending after the refusal must not hold the socket open.
  setTimeout(() => socket.destroy(), 1000).unref();
}

/**
 * The peer's side: proves the key and checks the daemon's proof. Resolves with the socket
 * paused and ready for MessagePack-RPC; rejects with NO_DAEMON or AUTH_FAILED naming `where`.
 */
export async function offerHandshake(socket: Socket, key: Buffer, where: string, timeout = DEFAULT_HANDSHAKE_TIMEOUT): Promise<void> {
  const notDaemon = new RpcmigError('NO_DAEMON', `the peer at ${where} answered, but it is not an rpcmig daemon`);
  const readHello = collect<Buffer | RpcmigError>(socket, (bytes) => {
    if (cannotBe(bytes, 'H')) return notDaemon;
    return bytes.length >= HELLO_SIZE ? bytes : undefined;
  }, () => new RpcmigError('NO_DAEMON', `the daemon at ${where} closed the connection before its handshake`));
  const hello = await within(timeout, readHello, () => new RpcmigError('NO_DAEMON', `the daemon at ${where} sent no handshake within ${timeout} ms`));
  if (hello instanceof RpcmigError) throw hello;
  if (hello.length !== HELLO_SIZE) throw notDaemon;
  const nd = hello.subarray(HEADER_SIZE);
  const nc = randomBytes(NONCE_SIZE);
  socket.write(Buffer.concat([header('P'), nc, mac(key, 'rpcmig-client', nd, nc)]));
  const readVerdict = collect<Buffer | RpcmigError>(socket, (bytes) => {
    if (bytes.length < VERDICT_SIZE) return undefined;
    socket.pause();
    if (bytes.length > VERDICT_SIZE) socket.unshift(bytes.subarray(VERDICT_SIZE));
    return bytes.subarray(0, VERDICT_SIZE);
  }, () => new RpcmigError('AUTH_FAILED', `the daemon at ${where} closed the connection during the handshake`));
  const verdict = await within(timeout, readVerdict, () => new RpcmigError('AUTH_FAILED', `the daemon at ${where} did not answer the handshake within ${timeout} ms`));
  if (verdict instanceof RpcmigError) throw verdict;
  checkVerdict(verdict, key, nd, nc, where);
}

function checkVerdict(verdict: Buffer, key: Buffer, nd: Buffer, nc: Buffer, where: string): void {
  if (hasHeader(verdict, 'R')) {
    const code = verdict[HEADER_SIZE];
    const reason = code === 1 ? 'refused the key' : `refused the connection: ${REFUSALS[code as RefusalCode] ?? 'no reason given'}`;
    throw new RpcmigError('AUTH_FAILED', `the daemon at ${where} ${reason}`);
  }
  if (!hasHeader(verdict, 'A')) throw new RpcmigError('AUTH_FAILED', `the daemon at ${where} sent a malformed handshake verdict`);
  if (!timingSafeEqual(verdict.subarray(HEADER_SIZE), mac(key, 'rpcmig-daemon', nd, nc))) {
    throw new RpcmigError('AUTH_FAILED', `the daemon at ${where} could not prove it holds the cluster key`);
  }
}
