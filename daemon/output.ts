// What the CLI prints: call results as JSON (one rule for values JSON cannot hold) and the
// `ls` listing as JSON or as a table.
import { RpcmigError } from '../runtime/errors.js';
import type { Breakdown } from './move.js';
import type { Listing } from './names.js';

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
    forwards: listing.forwards.map(({ name, to }) => ({ name, to })),
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

const FIGURES = ['quiesce_ms', 'snapshot_ms', 'copy_ms', 'start_ms', 'total_ms', 'pause_ms', 'state_bytes', 'program_bytes_sent'] as const;

/** Checks the daemon's answer to `migrate`: every figure a number, `from`, `to`, `address` strings. */
export function checkBreakdown(value: unknown): Breakdown {
  const b = value as Record<string, unknown> | null;
  if (!b || !FIGURES.every((f) => typeof b[f] === 'number') || typeof b.from !== 'string' || typeof b.to !== 'string' || typeof b.address !== 'string') {
    throw new RpcmigError('PROTOCOL_ERROR', 'the daemon answered migrate with something that is not a breakdown');
  }
  return value as Breakdown;
}

/** The paper's figures (Hori & Ito 1993, rdict on a 33 MHz SPARCstation), beside ours. */
const PAPER: Partial<Record<(typeof FIGURES)[number], string>> = { snapshot_ms: '80', copy_ms: '410', total_ms: '930' };

/** The breakdown for people: one row per figure, the paper's where it reported one. */
export function breakdownTable(name: string, b: Breakdown): string {
  const ms = (x: number) => x.toFixed(1);
  const rows = [
    ['quiesce', ms(b.quiesce_ms), 'ms', 'order taken -> no call executing', ''],
    ['snapshot', ms(b.snapshot_ms), 'ms', 'state file written', PAPER.snapshot_ms!],
    ['copy', ms(b.copy_ms), 'ms', 'program and state to the destination', PAPER.copy_ms!],
    ['start', ms(b.start_ms), 'ms', 'destination started, restored, serving', ''],
    ['total', ms(b.total_ms), 'ms', 'order -> first reply from the new host', PAPER.total_ms!],
    ['pause', ms(b.pause_ms), 'ms', 'longest a call could wait for the move', ''],
    ['state', String(b.state_bytes), 'bytes', '', ''],
    ['program', String(b.program_bytes_sent), 'bytes', 'program bytes sent (0: cached there)', ''],
  ];
  return `migrated ${name} from ${b.from} to ${b.to} (now at ${b.address})\n`
    + table([['STEP', 'TIME', 'UNIT', 'WHAT', 'PAPER 1993 (ms)'], ...rows]);
}
