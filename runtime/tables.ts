// String tables: a Map whose keys and values are all strings, written after the state
// file's message as V8's serializer writes a Map, because msgpackr encodes short strings one
// character at a time (see codec.ts, which decides which Maps become tables).
import { Serializer } from 'node:v8';
import { addExtension } from 'msgpackr';

// The format, as V8's serializer writes a Map
// (`;`, per string `"` length latin1-bytes or, after an optional 00 pad, `c` byte-length
// UTF-16LE, then `:` 2×size; lengths LEB128). V8's format is documented as stable; this reads
// it itself, so a restore does not depend on the reader's V8. Lone surrogates survive.

/**
 * Below this a Map is left to msgpackr: a table saves little and copies its containers. From
 * here up V8's serializer writes it several times faster (a 1,000-word dictionary: 0.5 ms
 * against 1.2–3.5 ms), and reading it back costs the same.
 */
export const TABLE_MIN_ENTRIES = 64;
/** Where the Map was: the index of its table. */
const TABLE_REF_TYPE = 0x4d;
/** Text decoded in one piece; a restored string keeps its piece alive, so keep them small. */
const TEXT_CHUNK_BYTES = 4096;
const TAG = { PADDING: 0x00, BEGIN_MAP: 0x3b, END_MAP: 0x3a, ONE_BYTE: 0x22, TWO_BYTE: 0x63 };

export class TableRef {
  constructor(readonly index: number) {}
}

/** The tables of the body being decoded, for the TableRef extension (unpack is synchronous). */
let tablesRead: Map<string, string>[] = [];

/** Runs `decode` (an unpack of the message) with the tables that follow it, read from `at` on. */
export function withTablesRead<T>(bytes: Buffer, at: number, decode: () => T): T {
  tablesRead = readTables(bytes, at);
  try {
    return decode();
  } finally {
    tablesRead = [];
  }
}

addExtension({
  Class: TableRef,
  type: TABLE_REF_TYPE,
  write: (ref: TableRef) => ref.index,
  read: (index: number) => tablesRead[index] ?? damaged(),
});

/** String.prototype.isWellFormed is in Node 20 but not in the ES2023 lib this project targets. */
export function isWellFormed(text: string): boolean {
  return (text as string & { isWellFormed(): boolean }).isWellFormed();
}

export function isStringMap(map: Map<unknown, unknown>): boolean {
  // a key with a lone surrogate is refused, as for any other Map (see Survey.key)
  for (const key of map.keys()) if (typeof key !== 'string' || !isWellFormed(key)) return false;
  for (const value of map.values()) if (typeof value !== 'string') return false;
  return true;
}

function readTables(bytes: Buffer, at: number): Map<string, string>[] {
  const reader = new TableReader(bytes, at);
  const tables: Map<string, string>[] = [];
  while (reader.at < bytes.length) {
    if (reader.byte() !== TAG.BEGIN_MAP) damaged();
    const map = new Map<string, string>();
    for (let tag = reader.byte(); tag !== TAG.END_MAP; tag = reader.byte()) {
      const key = reader.string(tag);
      map.set(key, reader.string(reader.byte()));
    }
    if (reader.length() !== map.size * 2) damaged();
    tables.push(map);
  }
  return tables;
}

function damaged(): never {
  throw new Error('rpcmig: a string table is damaged');
}

/**
 * Latin-1 strings are sliced out of a chunk decoded at once (one native call per chunk, not per
 * string); UTF-16 strings, rarer, are decoded one by one.
 */
class TableReader {
  private text = '';
  private textStart = 0;
  private textEnd = 0;

  constructor(private readonly bytes: Buffer, public at: number) {}

  byte(): number {
    if (this.at >= this.bytes.length) damaged();
    return this.bytes[this.at++];
  }

  length(): number {
    let length = 0;
    for (let shift = 0, byte = 0x80; byte & 0x80; shift += 7) length += ((byte = this.byte()) & 0x7f) * 2 ** shift;
    return length;
  }

  string(tag: number): string {
    while (tag === TAG.PADDING) tag = this.byte();
    if (tag !== TAG.ONE_BYTE && tag !== TAG.TWO_BYTE) damaged();
    const length = this.length();
    const start = this.at;
    this.at += length;
    if (this.at > this.bytes.length) damaged();
    if (tag === TAG.TWO_BYTE) return this.bytes.toString('utf16le', start, this.at);
    if (this.at > this.textEnd) {
      this.textStart = start;
      this.textEnd = Math.min(this.bytes.length, Math.max(this.at, start + TEXT_CHUNK_BYTES));
      this.text = this.bytes.toString('latin1', start, this.textEnd);
    }
    return this.text.substring(start - this.textStart, this.at - this.textStart);
  }
}

/** Entries a table is written in at a time: its piece of the body stays small. */
const TABLE_SLICE_ENTRIES = 16_384;
const DENSE_ARRAY = 0x41;
const END_DENSE_ARRAY = 0x24;

/**
 * A table as V8's serializer writes a Map (BEGIN_MAP, key, value, …, END_MAP, 2×size), made in
 * slices: each slice of entries is serialized as an array, whose elements V8 writes exactly as
 * it writes a Map's, and sent without the array's framing. So no piece holds the whole table,
 * and V8 makes no copy of all its entries as it does for a Map.
 */
export function* tablePieces(map: Map<unknown, unknown>): Generator<Uint8Array> {
  yield Uint8Array.of(TAG.BEGIN_MAP);
  let slice: unknown[] = [];
  for (const [key, value] of map) {
    slice.push(key, value);
    if (slice.length < 2 * TABLE_SLICE_ENTRIES) continue;
    yield arrayElements(slice);
    slice = [];
  }
  if (slice.length > 0) yield arrayElements(slice);
  const end = new Serializer();
  end.writeRawBytes(Uint8Array.of(TAG.END_MAP));
  end.writeUint32(map.size * 2);
  yield end.releaseBuffer();
}

/** The serialized elements of a dense array: without `A` length before them and `$` 0 length after. */
function arrayElements(elements: unknown[]): Uint8Array {
  const serializer = new Serializer();
  serializer.writeValue(elements);
  const bytes = serializer.releaseBuffer();
  const lengthBytes = varintBytes(elements.length);
  const end = bytes.length - 2 - lengthBytes;
  if (bytes[0] !== DENSE_ARRAY || bytes[end] !== END_DENSE_ARRAY) throw new Error('rpcmig: this V8 did not write a dense array of strings');
  return bytes.subarray(1 + lengthBytes, end);
}

function varintBytes(value: number): number {
  let bytes = 1;
  while (value >= 0x80) {
    value = Math.floor(value / 0x80);
    bytes++;
  }
  return bytes;
}

/** Tables are used only if this V8 writes what readTables reads (checked once, on a sample). */
export const TABLES_WORK = ((): boolean => {
  const sample = new Map([['one-byte ÿ', 'two-byte \u0100 \ud800'], ['', 'x'.repeat(5000)]]);
  try {
    const [read] = readTables(Buffer.concat([...tablePieces(sample)]), 0);
    return read.size === sample.size && [...sample].every(([key, value]) => read.get(key) === value);
  } catch {
    return false;
  }
})();
