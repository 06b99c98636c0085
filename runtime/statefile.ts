// The state file: what a snapshot writes and a restoring process reads.
//
// Layout (all integers big-endian):
//   offset  size  field
//   0       8     magic "RPCMIGSF"
//   8       2     format version (2)
//   10      4     variable count n
//   14      ...   n entries: u16 key length, key (UTF-8), u16 fingerprint length, fingerprint
//   h       8     body length (u64)
//   h+8     32    SHA-256 over the body, then over every byte before the checksum
//   h+40    ...   body: msgpackr, see codec.ts
// The checksum covers the header too, so a flipped byte in a key or fingerprint is caught
// before the fingerprints are compared. It takes the body first because a snapshot streams
// the body to the file as it is encoded, and writes the header, which counts it, last.
import { createHash, type Hash } from 'node:crypto';
import { closeSync, fsyncSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';

export const MAGIC = Buffer.from('RPCMIGSF', 'latin1');
export const FORMAT_VERSION = 3;
const CHECKSUM_BYTES = 32;

/** key -> schema fingerprint of each saved variable */
export type Fingerprints = Map<string, string>;

export interface StateFile {
  fingerprints: Fingerprints;
  body: Uint8Array;
}

/**
 * Counts and checksums a body given piece by piece; then makes the header that goes in front
 * of it. Its length is known from the start, so a writer can leave room for it.
 */
export class StateFileHeader {
  private readonly entries: Buffer[][];
  private readonly hash: Hash = createHash('sha256');
  private bodyBytes = 0;
  readonly length: number;

  constructor(fingerprints: Fingerprints) {
    this.entries = [...fingerprints].map(([key, print]) => [Buffer.from(key), Buffer.from(print)]);
    const entryBytes = this.entries.reduce((sum, [key, print]) => sum + 4 + key.length + print.length, 0);
    this.length = MAGIC.length + 2 + 4 + entryBytes + 8 + CHECKSUM_BYTES;
  }

  add(piece: Uint8Array): void {
    this.hash.update(piece);
    this.bodyBytes += piece.length;
  }

  /** The header for the body added so far. */
  finish(): Buffer {
    const header = Buffer.allocUnsafe(this.length);
    let at = MAGIC.copy(header, 0);
    at = header.writeUInt16BE(FORMAT_VERSION, at);
    at = header.writeUInt32BE(this.entries.length, at);
    for (const [key, print] of this.entries) {
      at = header.writeUInt16BE(key.length, at);
      at += key.copy(header, at);
      at = header.writeUInt16BE(print.length, at);
      at += print.copy(header, at);
    }
    at = header.writeBigUInt64BE(BigInt(this.bodyBytes), at);
    this.hash.update(header.subarray(0, at)).digest().copy(header, at);
    return header;
  }
}

/** The whole file in memory, as its header and the body's pieces (views, not copies). */
export function stateFileParts(fingerprints: Fingerprints, body: Iterable<Uint8Array>): Buffer[] {
  const header = new StateFileHeader(fingerprints);
  const pieces: Buffer[] = [];
  for (const piece of body) {
    header.add(piece);
    pieces.push(Buffer.from(piece.buffer, piece.byteOffset, piece.byteLength));
  }
  return [header.finish(), ...pieces];
}

/** Parses and verifies a state file; throws an Error saying what is wrong with it. */
export function decodeStateFile(file: Uint8Array): StateFile {
  const bytes = Buffer.from(file.buffer, file.byteOffset, file.byteLength);
  const reader = new Reader(bytes);
  if (!reader.has(MAGIC.length)) throw new Error('state file is truncated (its header is incomplete)');
  if (!bytes.subarray(0, MAGIC.length).equals(MAGIC)) throw new Error('not an rpcmig state file (bad magic)');
  reader.at = MAGIC.length;
  const version = reader.u16();
  if (version !== FORMAT_VERSION) {
    throw new Error(`state file format version ${version}; this build reads version ${FORMAT_VERSION}`);
  }
  const fingerprints: Fingerprints = new Map();
  for (let n = reader.u32(); n > 0; n--) fingerprints.set(reader.text(), reader.text());
  const bodyLength = Number(reader.u64());
  const headerEnd = reader.at;
  const expectedLength = headerEnd + CHECKSUM_BYTES + bodyLength;
  if (bytes.length !== expectedLength) {
    throw new Error(`state file is ${bytes.length} bytes, its header says ${expectedLength} (truncated or padded)`);
  }
  const body = bytes.subarray(headerEnd + CHECKSUM_BYTES);
  const stored = bytes.subarray(headerEnd, headerEnd + CHECKSUM_BYTES);
  if (!checksum(bytes.subarray(0, headerEnd), body).equals(stored)) {
    throw new Error('state file checksum mismatch (the file is corrupted)');
  }
  return { fingerprints, body };
}

function checksum(header: Uint8Array, body: Uint8Array): Buffer {
  return createHash('sha256').update(body).update(header).digest();
}

/** Bounds-checked reads: a truncated header is reported as truncated, not as a RangeError. */
class Reader {
  at = 0;
  constructor(private readonly bytes: Buffer) {}

  has(length: number): boolean {
    return this.at + length <= this.bytes.length;
  }

  private need(length: number): number {
    if (!this.has(length)) throw new Error('state file is truncated (its header is incomplete)');
    const at = this.at;
    this.at += length;
    return at;
  }

  u16(): number {
    return this.bytes.readUInt16BE(this.need(2));
  }

  u32(): number {
    return this.bytes.readUInt32BE(this.need(4));
  }

  u64(): bigint {
    return this.bytes.readBigUInt64BE(this.need(8));
  }

  text(): string {
    const length = this.u16();
    const at = this.need(length);
    return this.bytes.toString('utf8', at, at + length);
  }
}

/**
 * Writes to a temporary name and renames it over `path`, so no reader ever sees a partial
 * file. `durable` (the default) adds an fsync of the file before the rename and of the
 * directory after, so a crash leaves either the old file or the complete new one.
 */
export function writeStateFile(path: string, bytes: Uint8Array | Uint8Array[], durable = true): void {
  replaceFile(path, durable, (fd) => {
    for (const part of Array.isArray(bytes) ? bytes : [bytes]) writeAll(fd, part, -1);
  });
}

/**
 * A snapshot: the body's pieces are written as they are encoded, none kept, after room for the
 * header, which goes in last. Not durable: a migration's snapshot lives only for the move, the
 * server keeps its state in memory until the commit, and a crash of the host ends the move, so
 * nothing would read it back after one. A state of at most `inlineMax` bytes (-1: none) is
 * returned whole (`inline`) and no file is written: for a small state, creating, writing and
 * renaming the file costs more than encoding it; a larger one goes to the file as it is
 * encoded, the pieces held so far first.
 */
export function takeSnapshot(path: string, fingerprints: Fingerprints, body: Iterable<Uint8Array>, inlineMax: number): { size: number; inline?: Buffer } {
  const header = new StateFileHeader(fingerprints);
  const pieces = body[Symbol.iterator]();
  const held: Uint8Array[] = [];
  let heldBytes = 0;
  for (let next = pieces.next(); !next.done; next = pieces.next()) {
    header.add(next.value);
    held.push(next.value);
    heldBytes += next.value.length;
    if (heldBytes > inlineMax) {
      let size = header.length;
      replaceFile(path, false, (fd) => {
        for (const piece of held.splice(0)) size += writeAll(fd, piece, size);
        for (let more = pieces.next(); !more.done; more = pieces.next()) {
          header.add(more.value);
          size += writeAll(fd, more.value, size);
        }
        writeAll(fd, header.finish(), 0);
      });
      return { size };
    }
  }
  const inline = Buffer.concat([header.finish(), ...held]);
  return { size: inline.length, inline };
}

/** Writes every byte, at `position` (-1: where the file is). */
function writeAll(fd: number, bytes: Uint8Array, position: number): number {
  for (let done = 0; done < bytes.length;) {
    done += writeSync(fd, bytes, done, bytes.length - done, position < 0 ? null : position + done);
  }
  return bytes.length;
}

/**
 * Where process `pid` writes the file `path` before it renames it into place: a snapshot's
 * daemon reads it there while it grows (daemon/statecopy.ts).
 */
export function temporaryOf(path: string, pid: number): string {
  return `${path}.${pid}.tmp`;
}

function replaceFile(path: string, durable: boolean, write: (fd: number) => void): void {
  const temporary = temporaryOf(path, process.pid);
  const fd = openSync(temporary, 'w', 0o600);
  try {
    write(fd);
    if (durable) fsyncSync(fd);
  } catch (error) {
    rmSync(temporary, { force: true });
    throw error;
  } finally {
    closeSync(fd);
  }
  renameSync(temporary, path);
  if (!durable) return;
  const directory = openSync(dirname(path), 'r');
  try {
    fsyncSync(directory);
  } finally {
    closeSync(directory);
  }
}
