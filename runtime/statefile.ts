// The state file: what a snapshot writes and a restoring process reads.
//
// Layout (all integers big-endian):
//   offset  size  field
//   0       8     magic "RPCMIGSF"
//   8       2     format version (2)
//   10      4     variable count n
//   14      ...   n entries: u16 key length, key (UTF-8), u16 fingerprint length, fingerprint
//   h       8     body length (u64)
//   h+8     32    SHA-256 over every byte before it and over the body
//   h+40    ...   body: msgpackr, see codec.ts
// The checksum covers the header too, so a flipped byte in a key or fingerprint is caught
// before the fingerprints are compared.
import { createHash } from 'node:crypto';
import { closeSync, fsyncSync, openSync, renameSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';

export const MAGIC = Buffer.from('RPCMIGSF', 'latin1');
export const FORMAT_VERSION = 2;
const CHECKSUM_BYTES = 32;

/** key -> schema fingerprint of each saved variable */
export type Fingerprints = Map<string, string>;

export interface StateFile {
  fingerprints: Fingerprints;
  body: Uint8Array;
}

/** The file as [header with checksum, body]: written one after the other, with no copy of the body. */
export function stateFileParts(fingerprints: Fingerprints, body: Uint8Array): [Buffer, Uint8Array] {
  const entries = [...fingerprints].map(([key, print]) => [Buffer.from(key), Buffer.from(print)]);
  const entryBytes = entries.reduce((sum, [key, print]) => sum + 4 + key.length + print.length, 0);
  const header = Buffer.allocUnsafe(MAGIC.length + 2 + 4 + entryBytes + 8 + CHECKSUM_BYTES);
  let at = MAGIC.copy(header, 0);
  at = header.writeUInt16BE(FORMAT_VERSION, at);
  at = header.writeUInt32BE(entries.length, at);
  for (const [key, print] of entries) {
    at = header.writeUInt16BE(key.length, at);
    at += key.copy(header, at);
    at = header.writeUInt16BE(print.length, at);
    at += print.copy(header, at);
  }
  at = header.writeBigUInt64BE(BigInt(body.length), at);
  checksum(header.subarray(0, at), body).copy(header, at);
  return [header, body];
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
  return createHash('sha256').update(header).update(body).digest();
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
 * directory after, so a crash leaves either the old file or the complete new one. A migration's
 * snapshot is not durable: it lives only for the move, the server keeps its state in memory
 * until the commit, and a crash of either host ends the move, so nothing would read it back.
 */
export function writeStateFile(path: string, bytes: Uint8Array | Uint8Array[], durable = true): void {
  const temporary = `${path}.${process.pid}.tmp`;
  const fd = openSync(temporary, 'w', 0o600);
  try {
    for (const part of Array.isArray(bytes) ? bytes : [bytes]) {
      for (let at = 0; at < part.length;) at += writeSync(fd, part, at, part.length - at);
    }
    if (durable) fsyncSync(fd);
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
