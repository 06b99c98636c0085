// The registry of @migrate variables in this process: the calls the transformer emits
// (program, restore, register, registerClass), the snapshot (captureState), and the restore
// a process started with RPCMIG_RESTORE=<file> performs while its modules initialise.
import { readFileSync } from 'node:fs';
import { decodeGraph, encodeGraph } from './codec.js';
import { decodeStateFile, stateFileParts, takeSnapshot, type Fingerprints } from './statefile.js';

export const RESTORE_ENV = 'RPCMIG_RESTORE';
/** Set by a daemon on a moved server's standby: the migration whose state it waits for. */
export const STANDBY_ENV = 'RPCMIG_STANDBY';

/**
 * Keys the runtime saves for itself (a server's completion records): always accepted, never
 * in a build's manifest.
 */
export const INTERNAL_PREFIX = 'rpcmig:';
const INTERNAL_FINGERPRINT = 'rpcmig-internal-1';

/** Every @migrate variable of the compiled program: key -> schema fingerprint. */
export type Manifest = Readonly<Record<string, string>>;

/** A class the runtime may restore instances of; its constructor is never called. */
export type MigratableClass = abstract new (...args: never[]) => unknown;

/** What an annotated module talks to; one per process. */
export interface ProgramState {
  /** The saved value of `key` when restoring and the file has it, else `initial`. */
  restore<T>(key: string, initial: T): T;
  /** How to read the variable's current value at snapshot time. */
  register(key: string, get: () => unknown): void;
  /** Instances saved with this class key are restored with `ctor.prototype`. */
  registerClass(key: string, ctor: MigratableClass): void;
}

let manifest: Manifest | undefined;
let state: ProgramState | undefined;
/** Values read from the restore file, handed out (and dropped) by restore(). */
let restored: Map<string, unknown> | undefined;
const getters = new Map<string, () => unknown>();
const classes = new Map<string, MigratableClass>();
const classKeys = new Map<object, string>();
/** Decoded instances whose class registers later in module order. */
const waiting = new Map<string, object[]>();

/**
 * Called by every annotated module with the same manifest. The first call restores (when
 * RPCMIG_RESTORE is set): it verifies and decodes the whole file before any variable is
 * restored, and throws, restoring nothing, if the file does not fit this build.
 */
/** Set by a standby (runtime/standby.ts): blocks until the state file is whole. */
let gate: (() => void) | undefined;

/** A standby loads the program ahead of its state: the first read of the state waits at `wait`. */
export function gateRestore(wait: () => void): void {
  gate = wait;
}

/** The size of the state file this process restored from; undefined until it restores. */
let restoredBytes: number | undefined;

function readRestoreFile(path: string): Buffer {
  const wait = gate;
  gate = undefined;
  wait?.();
  const file = readFileSync(path);
  restoredBytes = file.length;
  return file;
}

export function program(current: Manifest): ProgramState {
  if (state) {
    if (current !== manifest) assertSameBuild(manifest!, current);
    return state;
  }
  manifest = current;
  const path = process.env[RESTORE_ENV];
  if (path) {
    try {
      restored = decodeState(readRestoreFile(path), current);
    } catch (error) {
      throw new Error(`rpcmig: cannot restore from ${path}: ${(error as Error).message}`);
    }
  }
  state = { restore, register, registerClass };
  return state;
}

/** The state-file bytes of this process: every registered variable, as it is now. */
export function captureState(): Buffer {
  const { values, fingerprints } = registered();
  return encodeState(values, fingerprints);
}

/** Writes the state file of this process to `path` as captureState() makes it, streaming its body; returns its size. */
export function writeSnapshot(path: string): number {
  return snapshot(path, -1).size;
}

/** The same, but a state file of at most `inlineMax` bytes is returned (`inline`) instead of written. */
export function snapshot(path: string, inlineMax: number): { size: number; inline?: Buffer } {
  const { values, fingerprints } = registered();
  return takeSnapshot(path, fingerprints, encodeGraph(values, classKeyOf), inlineMax);
}

function registered(): { values: Record<string, unknown>; fingerprints: Fingerprints } {
  const values: Record<string, unknown> = {};
  const fingerprints: Fingerprints = new Map();
  for (const [key, get] of getters) {
    values[key] = get();
    fingerprints.set(key, key.startsWith(INTERNAL_PREFIX) ? INTERNAL_FINGERPRINT : manifest![key]);
  }
  return { values, fingerprints };
}

/** Frames variables (key -> value) and their fingerprints as a state file. */
export function encodeState(values: Record<string, unknown>, fingerprints: Fingerprints): Buffer {
  return Buffer.concat(encodeStateParts(values, fingerprints));
}

/** The same as [header, body pieces]: every byte a snapshot writes, not joined into one buffer. */
export function encodeStateParts(values: Record<string, unknown>, fingerprints: Fingerprints): Buffer[] {
  return stateFileParts(fingerprints, encodeGraph(values, classKeyOf));
}

const classKeyOf = (proto: object): string | undefined => classKeys.get(proto);

let warmed: 'no' | 'once' | 'thoroughly' = 'no';

/**
 * Encodes and decodes a small state of the usual shapes (Maps, strings, numbers, arrays,
 * objects), so that V8 has compiled the codec's paths before a real snapshot or restore needs
 * them: cold, a snapshot or restore of a thousand words takes milliseconds more of the
 * clients' pause. Once (~20 ms) leaves a thousand words and a client's completion records at
 * ~2 ms to snapshot and ~1 ms to restore here: V8 optimises a loop only once it has run it
 * often enough. `thorough` goes on for THOROUGH_WARM_ROUNDS rounds of such a state, ~40 ms
 * more, after which they take ~0.7 and ~0.4 ms; it is for a process with nothing else to do (a
 * daemon's spare, ahead of any move): anywhere else it takes the CPU from a move on the host.
 */
export function warmCodec(thorough = false): void {
  const fingerprints = new Map([[WARM_KEY, INTERNAL_FINGERPRINT]]);
  const round = (value: unknown) => decodeState(encodeState({ [WARM_KEY]: value }, fingerprints), {});
  if (warmed === 'no') {
    const sample = new Map<string, unknown>();
    for (let i = 0; i < 64; i++) sample.set(`key ${i}`, { text: `value ${i}`, n: i, x: i / 3, list: [i, 'é', true, null], big: 2n ** 70n });
    // Words as a dictionary holds them, one-byte and two-byte strings.
    const words = new Map(Array.from({ length: 2048 }, (_, i) => [`w${i}`, `meaning ${i} é`.slice(0, 9 + (i % 8))]));
    round({ sample, small: new Map([['a', 'b']]), words, when: new Date(0) });
    warmed = 'once';
  }
  if (thorough && warmed === 'once') {
    // A dictionary and a client's completion records (records.ts, `save`): [id, below, [seq, error, result, ...]].
    const words = new Map(Array.from({ length: 1024 }, (_, i) => [`word${i}`, `meaning of word ${i}`]));
    const records = [['rpcmig-warm-up', 0, Array.from({ length: 256 }, (_, i) => [i, null, `result ${i}`]).flat()]];
    for (let i = 0; i < THOROUGH_WARM_ROUNDS; i++) round({ words, records });
    warmed = 'thoroughly';
  }
}

/**
 * Encodes this process's own state `rounds` times and drops it, if the process restored from a
 * state file of at most `maxBytes` (a state that size is likely still about that size): V8
 * then compiles the codec for the shapes this program's variables have, which a warm-up's
 * made-up state does not show it, and the next snapshot, a move's, runs that code. Returns
 * whether it ran.
 */
export function rehearseSnapshot(maxBytes: number, rounds: number): boolean {
  if (restoredBytes === undefined || restoredBytes > maxBytes) return false;
  try {
    for (let round = 0; round < rounds; round++) {
      const { values, fingerprints } = registered();
      encodeStateParts(values, fingerprints);
    }
  } catch {
    // A state that cannot be encoded now fails a move's snapshot too, which reports why.
    return false;
  }
  return true;
}

const WARM_KEY = `${INTERNAL_PREFIX}warm-up`;
const THOROUGH_WARM_ROUNDS = 16;

/**
 * Verifies a state file against a build's manifest and decodes it: key -> value. Throws one
 * Error listing every problem; class instances get their prototype from registered classes.
 */
export function decodeState(file: Uint8Array, build: Manifest): Map<string, unknown> {
  const { fingerprints, body } = decodeStateFile(file);
  const problems = incompatibilities(fingerprints, build);
  if (problems.length > 0) throw new Error(problems.join('; '));
  const values = decodeGraph(body, adopt) as Record<string, unknown>;
  return new Map(Object.entries(values));
}

function incompatibilities(saved: Fingerprints, build: Manifest): string[] {
  const changed: string[] = [];
  const missing: string[] = [];
  for (const [key, fingerprint] of saved) {
    if (key.startsWith(INTERNAL_PREFIX)) continue;
    if (!Object.hasOwn(build, key)) missing.push(key);
    else if (build[key] !== fingerprint) changed.push(key);
  }
  const problems: string[] = [];
  if (changed.length > 0) problems.push(`changed: ${changed.join(', ')}`);
  if (missing.length > 0) problems.push(`missing from this build: ${missing.join(', ')}`);
  return problems;
}

function assertSameBuild(first: Manifest, current: Manifest): void {
  const keys = Object.keys(current);
  if (keys.length === Object.keys(first).length && keys.every((key) => first[key] === current[key])) return;
  throw new Error('rpcmig: modules of two different builds are loaded together; rebuild them as one program');
}

function restore<T>(key: string, initial: T): T {
  if (!restored) return initial;
  if (restored.has(key)) {
    const value = restored.get(key) as T;
    restored.delete(key);
    return value;
  }
  process.stderr.write(`rpcmig: ${key} is new in this build; it starts from its initialiser\n`);
  return initial;
}

/** Saves a runtime value under an internal key in every snapshot. */
export function registerInternal(key: string, get: () => unknown): void {
  getters.set(key, get);
}

export function unregisterInternal(key: string): void {
  getters.delete(key);
}

/**
 * The saved value of an internal key when this process restores, else undefined. A program
 * without @migrate variables never read its file during module initialisation: it is read here.
 */
export function restoreInternal(key: string): unknown {
  const values = restoredValues();
  const value = values?.get(key);
  values?.delete(key);
  return value;
}

/** The keys under `prefix` that the restore file holds and nothing restored yet; [] when not restoring. */
export function restoredKeys(prefix: string): string[] {
  return [...(restoredValues()?.keys() ?? [])].filter((key) => key.startsWith(prefix));
}

/** What is left of the restore file; read here when no @migrate variable read it during module initialisation. */
function restoredValues(): Map<string, unknown> | undefined {
  const path = process.env[RESTORE_ENV];
  if (!path) return undefined;
  if (!restored && !manifest) {
    try {
      restored = decodeState(readRestoreFile(path), {});
    } catch (error) {
      throw new Error(`rpcmig: cannot restore from ${path}: ${(error as Error).message}`);
    }
  }
  return restored;
}

function register(key: string, get: () => unknown): void {
  if (!Object.hasOwn(manifest!, key)) throw new Error(`rpcmig: ${key} is not in this build's manifest`);
  getters.set(key, get);
}

function registerClass(key: string, ctor: MigratableClass): void {
  classes.set(key, ctor);
  classKeys.set(ctor.prototype as object, key);
  for (const instance of waiting.get(key) ?? []) Object.setPrototypeOf(instance, ctor.prototype);
  waiting.delete(key);
}

/**
 * Gives a decoded instance its prototype. A class declared below the variable that holds its
 * instances registers after that variable is restored, so such instances wait for it; any
 * still waiting once module initialisation is over name a class this build does not have.
 */
function adopt(instance: object, classKey: string | null): void {
  const ctor = classKey === null ? undefined : classes.get(classKey);
  if (classKey === null || ctor) {
    Object.setPrototypeOf(instance, ctor ? ctor.prototype : null);
    return;
  }
  if (waiting.size === 0) setImmediate(assertClassesArrived);
  const list = waiting.get(classKey);
  if (list) list.push(instance);
  else waiting.set(classKey, [instance]);
}

function assertClassesArrived(): void {
  if (waiting.size === 0) return;
  throw new Error(`rpcmig: the state file has instances of classes this build does not register: ${[...waiting.keys()].join(', ')}`);
}
