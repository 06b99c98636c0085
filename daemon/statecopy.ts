// A large state file goes to the destination while its server still writes it (DESIGN §3
// step 3), so that the copy overlaps the snapshot instead of following it. A snapshot
// (runtime/statefile.ts, `takeSnapshot`) leaves room for its header, writes the body after it
// in order as it is encoded, then the header, and renames the whole into place. So every byte
// past those in the file when it is first seen is final once written: the body goes as the
// file grows, and the first bytes seen, where the header lands, go last, once the server has
// reported. A state sent inline (small) never has a file, and nothing is read; a file the
// tail did not see (its server was faster than a poll) goes whole once written (`sendRest`).
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { Window } from './copy.js';

/** How often a growing file is looked at. */
const POLL_MS = 2;
/** Reads, and pieces sent, of at most this many bytes. */
const PIECE_BYTES = 1 << 20;
const WINDOW = 16;
/** A snapshot that takes longer is not waited for here: the server's own timeout ends the move. */
const MOST_POLLS = 1_000_000;

export type SendPiece = (offset: number, bytes: Uint8Array, final: boolean) => Promise<unknown>;

/** What went while the file grew: bytes [held, sent); [0, held) wait for the end. */
export interface Tailed {
  held: number;
  sent: number;
}

/**
 * Sends `temporary`'s bytes as they are written, until `reported` settles or `ended()` (the
 * move is over); undefined when no file appeared (an inline state, or a snapshot that failed
 * before its file).
 */
export async function tailSnapshot(temporary: string, send: SendPiece, reported: Promise<unknown>, ended: () => boolean): Promise<Tailed | undefined> {
  let settled = false;
  const settling = reported.then(() => (settled = true), () => (settled = true));
  const over = () => settled || ended();
  const window = new Window(WINDOW);
  let fd: number | undefined;
  let held = 0;
  let sent = 0;
  try {
    for (let poll = 0; !over() && poll < MOST_POLLS; poll++) {
      // The report ends the wait at once: a small state's copy must not wait for a poll.
      await Promise.race([new Promise((resolve) => setTimeout(resolve, POLL_MS)), settling]);
      if (over()) break;
      fd ??= openIfThere(temporary);
      if (fd === undefined) continue;
      const size = fstatSync(fd).size;
      if (held === 0) {
        held = sent = size;
        continue;
      }
      const reading = fd;
      sent = await sendRange(sent, size, (bytes, at) => readAll(reading, bytes, at), send, window, { stop: over });
    }
    await window.drain();
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
  return fd === undefined || held === 0 ? undefined : { held, sent };
}

/**
 * Sends the rest of the state file at `path`, now whole: what the tail did not send, then the
 * first bytes, the header among them, marked final; without a tail, the whole file, its last
 * piece final. Returns the file's size.
 */
export async function sendRest(path: string, tailed: Tailed | undefined, send: SendPiece): Promise<number> {
  const file = await open(path, 'r');
  try {
    const { size } = await file.stat();
    const { held, sent } = tailed ?? { held: size, sent: size };
    if (size < sent) throw new Error(`the state file shrank to ${size} bytes after ${sent} were sent`);
    const window = new Window(WINDOW);
    const read = (bytes: Buffer, at: number) => file.read(bytes, 0, bytes.length, at);
    await sendRange(sent, size, read, send, window);
    await sendRange(0, held, read, send, window, { final: true });
    await window.drain();
    return size;
  } finally {
    await file.close();
  }
}

/**
 * Sends bytes [from, to) in pieces, each read by `read` at its offset, through `window`; the
 * last `final` if told. Stops early when `stop()`. Returns where it stopped.
 */
async function sendRange(
  from: number, to: number, read: (bytes: Buffer, at: number) => unknown, send: SendPiece, window: Window,
  { final = false, stop = () => false }: { final?: boolean; stop?: () => boolean } = {},
): Promise<number> {
  let at = from;
  while (at < to && !stop()) {
    const bytes = Buffer.allocUnsafe(Math.min(PIECE_BYTES, to - at));
    await read(bytes, at);
    await window.add(send(at, bytes, final && at + bytes.length === to));
    at += bytes.length;
  }
  return at;
}

function openIfThere(path: string): number | undefined {
  try {
    return openSync(path, 'r');
  } catch {
    return undefined;
  }
}

function readAll(fd: number, bytes: Uint8Array, position: number): void {
  for (let done = 0; done < bytes.length;) {
    const read = readSync(fd, bytes, done, bytes.length - done, position + done);
    if (read === 0) throw new Error(`the state file ended at ${position + done} bytes while being read`);
    done += read;
  }
}
