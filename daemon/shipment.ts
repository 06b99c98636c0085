// What a source daemon sends a destination, checked before anything is kept of it: the
// shipment (program and how to start it), the state file's pieces, and the record of a move
// the destination keeps until it hears how the move ended.
import { closeSync, fstatSync, openSync, writeSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { posix } from 'node:path';
import { parseAddress } from '../runtime/daemonlink.js';
import { RpcmigError } from '../runtime/errors.js';
import { ARRIVAL_ENV } from '../runtime/register.js';
import { SPARE_ENV } from './launch.js';
import { checkName } from './names.js';
import { manifestId, validateManifest, type Manifest } from './transfer.js';
import { isFileEntry } from './validate.js';

const MAX_STATE_BYTES = 2 ** 32;
const ID = /^[0-9a-f]{16}$/;
const PROGRAM_ID = /^[0-9a-f]{64}$/;

/** Where a destination keeps the record of a move: `arriving/<id>/arrival.json`. */
export const ARRIVAL_RECORD_FILE = 'arrival.json';

/**
 * What `arriving/<id>/arrival.json` holds from the prepare until the source's commit or abort:
 * whom to ask how the move ended should this daemon stop before it hears, and which process
 * it started. Written without fsync: it guards against this daemon's crash, and a crash of the
 * host ends the processes it names too.
 */
export interface ArrivalRecord {
  id: string;
  name: string;
  /** The source daemon's address. */
  source: string;
  pid?: number;
  /** The token of the spare that became the move's standby (see launch.ts, `Spares`). */
  spare?: string;
}

/** What the environment of a process the move started holds, as it started (see launch.ts, `end`). */
export function marksOf({ id, spare }: Pick<ArrivalRecord, 'id' | 'spare'>): string[] {
  return [`${ARRIVAL_ENV}=${id}`, ...(spare === undefined ? [] : [`${SPARE_ENV}=${spare}`])];
}

/** What the source sends first about the move, whatever it sends of the program. */
export interface ShipmentHead {
  id: string;
  name: string;
  /** The source daemon, asked how the move ended by a destination that restarted. */
  source: string;
  /** Paths relative to the program root. */
  entry: string;
  cwd: string;
  argv: string[];
  execArgv: string[];
}

/** What the source sends first, as the destination holds it: the program and how to start it. */
export interface Shipment extends ShipmentHead {
  /** Empty when the source sent the program's id alone. */
  manifest: Manifest;
  /** The manifest's id: the program's tree lives under `programs/<id>`. */
  program: string;
  /** The source sent the id alone, asking whether the tree is here. */
  byId: boolean;
}

/**
 * Writes the pieces of a state file at their offsets; the final one checks the size. Written
 * synchronously: each piece is at most a chunk, and a thread-pool round trip per file
 * operation would add to the clients' pause.
 */
export class StateWriter {
  complete = false;
  private fd: number | undefined;
  private received = 0;

  constructor(readonly path: string) {}

  async write(offset: number, bytes: Uint8Array, final: boolean): Promise<void> {
    if (this.complete) throw refuseMigration('state piece after the final one');
    if (offset < 0 || offset + bytes.length > MAX_STATE_BYTES) throw refuseMigration(`state piece at ${offset} exceeds ${MAX_STATE_BYTES} bytes`);
    this.fd ??= openSync(this.path, 'wx', 0o600);
    for (let done = 0; done < bytes.length;) done += writeSync(this.fd, bytes, done, bytes.length - done, offset + done);
    this.received += bytes.length;
    if (!final) return;
    if (fstatSync(this.fd).size !== this.received) throw refuseMigration('the state file arrived with gaps');
    // Not fsynced: the restoring process reads it back at once, on this host; a crash before
    // that ends the migration anyway, and the source still holds the state.
    this.close();
    this.complete = true;
  }

  async discard(): Promise<void> {
    this.close();
    await rm(this.path, { force: true });
  }

  private close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}

export function checkShipment(value: unknown): Shipment {
  const v = (typeof value === 'object' && value !== null ? value : {}) as Record<string, unknown>;
  if (typeof v.id !== 'string' || !ID.test(v.id)) throw new RpcmigError('BAD_REQUEST', 'prepare needs an id of 16 hex digits');
  const entry = relativePath(v.entry, 'entry');
  let manifest: Manifest = { entries: [] };
  let program: string;
  if (v.manifest === undefined) {
    if (typeof v.program !== 'string' || !PROGRAM_ID.test(v.program)) throw new RpcmigError('BAD_REQUEST', 'prepare needs a manifest or a program id of 64 hex digits');
    program = v.program;
  } else {
    manifest = validateManifest(v.manifest);
    program = manifestId(manifest);
    if (!manifest.entries.some((e) => isFileEntry(e) && e.path === entry)) throw refuseMigration(`the entry ${entry} is not a file of the program`);
  }
  const strings = (x: unknown) => Array.isArray(x) && x.every((s) => typeof s === 'string');
  if (!strings(v.argv) || !strings(v.execArgv)) throw new RpcmigError('BAD_REQUEST', 'argv and execArgv must be arrays of strings');
  if (typeof v.source !== 'string') throw new RpcmigError('BAD_REQUEST', 'prepare needs the source daemon\'s address');
  try {
    parseAddress(v.source);
  } catch (error) {
    throw new RpcmigError('BAD_REQUEST', `source: ${(error as Error).message}`);
  }
  return {
    id: v.id, name: checkName(v.name), source: v.source, manifest, program, byId: v.manifest === undefined, entry, cwd: v.cwd === '' ? '' : relativePath(v.cwd, 'cwd'),
    argv: v.argv as string[], execArgv: v.execArgv as string[],
  };
}

/** A path inside the program: relative, normalised, no `..`. */
function relativePath(value: unknown, what: string): string {
  if (typeof value !== 'string' || value === '' || posix.isAbsolute(value) || posix.normalize(value) !== value || value.split('/').includes('..')) {
    throw refuseMigration(`${what} must be a plain path inside the program; got ${JSON.stringify(value)}`);
  }
  return value;
}

export function checkRecord(text: string): ArrivalRecord | undefined {
  try {
    const { id, name, source, pid, spare } = JSON.parse(text) as Partial<ArrivalRecord>;
    if (typeof id !== 'string' || !ID.test(id) || typeof name !== 'string' || typeof source !== 'string') return undefined;
    return { id, name, source, ...(Number.isSafeInteger(pid) && pid! > 0 ? { pid } : {}), ...(typeof spare === 'string' && ID.test(spare) ? { spare } : {}) };
  } catch {
    return undefined;
  }
}

export function refuseMigration(message: string): RpcmigError {
  return new RpcmigError('MIGRATION_FAILED', message);
}
