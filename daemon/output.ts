// What the CLI prints: call results as JSON (one rule for values JSON cannot hold) and the
// `ls` listing as JSON or as a table.
import { RpcmigError } from '../runtime/errors.js';
import type { Forward, Listing } from './names.js';

/** Said in `rpcmig call --help`; `toJson` implements it. */
export const JSON_RULE = `Values JSON cannot hold print as: bigint as a decimal string, Map as an object
(as [key, value] pairs when a key is not a string), Set and typed arrays as
arrays, Date as an ISO string, RegExp as its /source/flags, undefined as null.`;

function bytes(view: ArrayBuffer | DataView): number[] {
  return view instanceof DataView ? Array.from(new Uint8Array(view.buffer, view.byteOffset, view.byteLength)) : Array.from(new Uint8Array(view));
}

function plain(this: unknown, key: string, value: unknown): unknown {
  // `this[key]` is the value before its toJSON ran (Buffer.toJSON would make it an object).
  const original = (this as Record<string, unknown>)[key];
  if (typeof value === 'bigint') return value.toString();
  if (original instanceof Map) {
    const entries = [...original];
    return entries.every(([k]) => typeof k === 'string') ? Object.fromEntries(entries) : entries;
  }
  if (original instanceof Set) return [...original];
  if (original instanceof ArrayBuffer || original instanceof DataView) return bytes(original);
  if (ArrayBuffer.isView(original)) return Array.from(original as unknown as ArrayLike<number | bigint>);
  if (original instanceof RegExp) return String(original);
  return value;
}

/** A call result as JSON text: indented for people, one line with `compact`. */
export function toJson(value: unknown, compact: boolean): string {
  return JSON.stringify(value, plain, compact ? undefined : 2) ?? 'null';
}

/** Checks the daemon's answer to `ls`, keeping exactly the contract's fields in order. */
export function checkListing(value: unknown, where: string): Listing {
  const listing = value as Partial<Listing> | null;
  if (!listing || !Array.isArray(listing.servers) || !Array.isArray(listing.forwards)) {
    throw new RpcmigError('PROTOCOL_ERROR', `the daemon at ${where} answered ls with something that is not a listing`);
  }
  return {
    servers: listing.servers.map(({ name, pid, address, state }) => ({ name, pid, address, state })),
    forwards: listing.forwards.map(({ name, to }: Forward) => ({ name, to })),
  };
}

function table(rows: string[][]): string {
  const widths = rows[0].map((_, column) => Math.max(...rows.map((row) => row[column].length)));
  return rows.map((row) => row.map((cell, column) => cell.padEnd(widths[column])).join('  ').trimEnd()).join('\n') + '\n';
}

/** The listing for people: a table of servers, then one of forwarding entries if any. */
export function listingTable(listing: Listing, where: string): string {
  let text = listing.servers.length === 0
    ? `no servers on the daemon at ${where}\n`
    : table([['NAME', 'PID', 'ADDRESS', 'STATE'], ...listing.servers.map((s) => [s.name, String(s.pid), s.address, s.state])]);
  if (listing.forwards.length > 0) {
    text += '\n' + table([['FORWARDED', 'TO'], ...listing.forwards.map((f) => [f.name, f.to])]);
  }
  return text;
}
