// Value fidelity on top of msgpackr: the options shared by the state file and the wire, and
// the graph encoding of the state file, which keeps what plain MessagePack loses.
//
// msgpackr has no hook for primitives or plain arrays, so -0, array holes and strings with
// lone surrogates cannot be fixed while packing. Instead one survey walks the graph first; it
// finds shared references, class instances and those special values. The body is
// `[root, classes, patches]`: the root as msgpackr writes it, then side tables that point
// (by msgpackr's structured-clone references) at the objects to fix after unpacking:
// `classes` = [object, classKey | null, ...] (null: a null prototype), `patches` =
// [container, key, code, data, ...]. Graphs with none of these (the common, large case) skip
// reference tracking, which costs about a third of msgpackr's packing time.
//
// msgpackr encodes short strings one character at a time, so a large Map of strings (the
// usual big variable) goes after the message as a string table instead (tables.ts): the body
// is `u32 message length, message, table, table, ...`.
import { Packr, RESERVE_START_SPACE, Unpackr } from 'msgpackr';
import { isStringMap, isWellFormed, TABLE_MIN_ENTRIES, TableRef, TABLES_WORK, tablePieces, withTablesRead } from './tables.js';

export interface CodecOptions {
  /** Track object identity (shared references and cycles); slower. */
  structuredClone?: boolean;
}

/** Options that keep types: bigint of any size, typed arrays, Set, RegExp, undefined, Buffer. */
function options(structuredClone: boolean) {
  return {
    structuredClone,
    moreTypes: true,
    // toJSON shapes a value for an API, not for storage: keep the object's own fields.
    useToJSON: false,
    // a decoded Buffer must not be a view that keeps the whole received message alive
    copyBuffers: true,
    mapsAsObjects: false,
    int64AsType: 'bigint' as const,
  };
}

export function createPackr(opts: CodecOptions = {}): Packr {
  return new Packr(options(opts.structuredClone ?? false));
}

export function createUnpackr(opts: CodecOptions = {}): Unpackr {
  return new Unpackr(options(opts.structuredClone ?? false));
}

/** Maps a prototype to the key its class was registered under, if it was. */
export type ClassKeyOf = (prototype: object) => string | undefined;
/** Receives each decoded class instance (still a plain object) with its class key. */
export type AdoptInstance = (instance: object, classKey: string | null) => void;

const HOLE = 0;
const NEGATIVE_ZERO = 1;
const UTF16_STRING = 2;
/** the message length in front of the body */
const LENGTH_BYTES = 4;

const plainPackr = createPackr();
const referencePackr = createPackr({ structuredClone: true });
const graphUnpackr = createUnpackr({ structuredClone: true });

/**
 * Encodes a graph with every supported type intact, as the pieces of the body in order, made
 * one at a time as they are asked for: a snapshot writes each and lets it go, so a large Map
 * never lies in memory a second time as one encoded buffer. Take each piece before asking for
 * the next (the first may be a view into the packer's buffer), and change nothing meanwhile.
 */
export function* encodeGraph(root: object, classKeyOf: ClassKeyOf): Generator<Uint8Array> {
  const survey = new Survey(classKeyOf);
  survey.object(root);
  const tables: Map<unknown, unknown>[] = [];
  const graph = withTables(root, survey, tables);
  const { shared, classes, patches } = survey;
  const packr = shared || classes.length > 0 || patches.length > 0 ? referencePackr : plainPackr;
  const message = packr.pack([graph, classes, patches], RESERVE_START_SPACE | LENGTH_BYTES);
  Buffer.from(message.buffer, message.byteOffset, LENGTH_BYTES).writeUInt32BE(message.length - LENGTH_BYTES);
  yield message;
  for (const table of tables) yield* tablePieces(table);
}

/** Decodes what encodeGraph wrote; hands class instances to `adopt`. */
export function decodeGraph(bytes: Uint8Array, adopt: AdoptInstance): unknown {
  const view = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const messageEnd = LENGTH_BYTES + view.readUInt32BE(0);
  const graph = withTablesRead(view, messageEnd, () => graphUnpackr.unpack(view.subarray(LENGTH_BYTES, messageEnd)) as [unknown, unknown[], unknown[]]);
  const [root, classes, patches] = graph;
  for (let i = 0; i < patches.length; i += 4) {
    applyPatch(patches[i] as Container, patches[i + 1], patches[i + 2] as number, patches[i + 3]);
  }
  for (let i = 0; i < classes.length; i += 2) adopt(classes[i] as object, classes[i + 1] as string | null);
  return root;
}

type Container = Record<PropertyKey, unknown> | Map<unknown, unknown>;

function applyPatch(container: Container, key: unknown, code: number, data: unknown): void {
  if (code === HOLE) {
    delete (container as Record<PropertyKey, unknown>)[key as number];
    return;
  }
  const value = code === NEGATIVE_ZERO ? -0 : Buffer.from(data as Uint8Array).toString('utf16le');
  if (container instanceof Map) container.set(key, value);
  else container[key as PropertyKey] = value;
}

function isNegativeZero(value: number): boolean {
  return value === 0 && 1 / value < 0;
}

/** A Map found in value position whose entries all fit a string table. */
interface TableCandidate {
  /** container, key, container, key, ... from the root down to the Map */
  path: unknown[];
  map: Map<unknown, unknown>;
}

/** One walk over the graph: identity, class instances, and the values msgpackr would alter. */
class Survey {
  readonly seen = new Set<object>();
  /** Objects reached more than once: shared references and cycles. */
  readonly repeated = new Set<object>();
  readonly classes: unknown[] = [];
  readonly patches: unknown[] = [];
  readonly tables: TableCandidate[] = [];
  shared = false;
  /** container, key pairs down to the object being surveyed */
  private readonly path: unknown[] = [];
  /** > 0 inside a Map key or Set member, which cannot be swapped for a copy */
  private keyDepth = 0;

  constructor(private readonly classKeyOf: ClassKeyOf) {}

  value(value: unknown, container: object, key: unknown): void {
    switch (typeof value) {
      case 'number':
        if (isNegativeZero(value)) this.patches.push(container, key, NEGATIVE_ZERO, null);
        return;
      case 'string':
        if (!isWellFormed(value)) {
          this.patches.push(container, key, UTF16_STRING, Buffer.from(value, 'utf16le'));
        }
        return;
      case 'object':
        if (value === null) return;
        this.path.push(container, key);
        this.object(value);
        this.path.length -= 2;
        return;
      case 'function':
      case 'symbol':
        throw new Error(`rpcmig: a ${typeof value} cannot be saved (found at key ${String(key)})`);
    }
  }

  /** Map keys, Set members and property names have no container slot to patch. */
  key(key: unknown): void {
    if (typeof key === 'string' && !isWellFormed(key)) {
      throw new Error(`rpcmig: a key with a lone surrogate cannot be saved: ${JSON.stringify(key)}`);
    }
    if (typeof key !== 'object' || key === null) return;
    this.keyDepth++;
    this.object(key);
    this.keyDepth--;
  }

  object(object: object): void {
    if (this.seen.has(object)) {
      this.shared = true;
      this.repeated.add(object);
      return;
    }
    this.seen.add(object);
    const proto: unknown = Object.getPrototypeOf(object);
    if (proto === Object.prototype) this.properties(object as Record<string, unknown>);
    else if (proto === Array.prototype) this.array(object as unknown[]);
    else if (proto === Map.prototype) this.map(object as Map<unknown, unknown>);
    else if (proto === Set.prototype) for (const member of object as Set<unknown>) this.key(member);
    else if (!isOpaqueBuiltin(object)) this.instance(object, proto as object | null);
  }

  private properties(object: Record<string, unknown>): void {
    for (const key in object) {
      this.key(key);
      this.value(object[key], object, key);
    }
  }

  private array(array: unknown[]): void {
    for (let i = 0; i < array.length; i++) {
      const item = array[i];
      if (item === undefined && !(i in array)) this.patches.push(array, i, HOLE, null);
      else this.value(item, array, i);
    }
  }

  private map(map: Map<unknown, unknown>): void {
    if (map.size >= TABLE_MIN_ENTRIES && this.keyDepth === 0 && TABLES_WORK && isStringMap(map)) {
      return void this.tables.push({ path: this.path.slice(), map });
    }
    this.entries(map);
  }

  entries(map: Map<unknown, unknown>): void {
    for (const [key, value] of map) {
      this.key(key);
      this.value(value, map, key);
    }
  }

  private instance(object: object, proto: object | null): void {
    const classKey = proto === null ? null : this.classKeyOf(proto);
    if (classKey === undefined) {
      const name = (proto as { constructor?: { name?: string } }).constructor?.name ?? 'anonymous';
      throw new Error(`rpcmig: an instance of class ${name} cannot be saved: the class is not registered`);
    }
    if (object instanceof Map || object instanceof Set || Array.isArray(object)) {
      throw new Error(`rpcmig: class ${classKey} extends a built-in collection, which cannot be saved`);
    }
    this.classes.push(object, classKey);
    for (const key of Object.keys(object)) {
      this.key(key);
      this.value((object as Record<string, unknown>)[key], object, key);
    }
  }
}

/**
 * The graph to pack: `root` with each table candidate's Map replaced by a TableRef, the Map
 * itself pushed to `tables`; a candidate not used is surveyed entry by entry after all. The containers on the way are copied, never changed; a candidate
 * is used only if neither it nor any container on its path is reached twice, so each copy
 * stands for an object with exactly one reference and identity is kept. The side tables are
 * pointed at the copies.
 */
function withTables(root: object, survey: Survey, tables: Map<unknown, unknown>[]): unknown {
  const { repeated, classes, patches } = survey;
  const copies = new Map<object, object>();
  const copyOf = (object: object) => copies.get(object) ?? copies.set(object, shallowCopy(object)).get(object)!;
  let result: unknown = root;
  for (const { path, map } of survey.tables) {
    if (repeated.has(map) || path.some((step, i) => i % 2 === 0 && repeated.has(step as object))) {
      survey.entries(map);
      continue;
    }
    const ref = new TableRef(tables.push(map) - 1);
    if (path.length === 0) result = ref;
    for (let i = 0; i < path.length; i += 2) {
      const child = i + 2 < path.length ? copyOf(path[i + 2] as object) : ref;
      setChild(copyOf(path[i] as object), path[i + 1], child);
    }
  }
  if (copies.size === 0) return result;
  for (let i = 0; i < classes.length; i += 2) classes[i] = copies.get(classes[i] as object) ?? classes[i];
  for (let i = 0; i < patches.length; i += 4) patches[i] = copies.get(patches[i] as object) ?? patches[i];
  return copies.get(root) ?? result;
}

/** A copy msgpackr packs as it packs the original: same prototype, same own enumerable fields. */
function shallowCopy(object: object): object {
  if (Array.isArray(object)) return object.slice();
  if (object instanceof Map) return new Map(object);
  const copy = Object.create(Object.getPrototypeOf(object)) as object;
  for (const key of Object.keys(object)) {
    const value = (object as Record<string, unknown>)[key];
    Object.defineProperty(copy, key, { value, writable: true, enumerable: true, configurable: true });
  }
  return copy;
}

function setChild(container: object, key: unknown, child: unknown): void {
  if (container instanceof Map) container.set(key, child);
  else (container as Record<PropertyKey, unknown>)[key as PropertyKey] = child;
}

/** Built-ins that msgpackr writes whole (bytes, time, pattern); nothing inside to survey. */
function isOpaqueBuiltin(object: object): boolean {
  return ArrayBuffer.isView(object) || object instanceof ArrayBuffer ||
    object instanceof Date || object instanceof RegExp || object instanceof Error;
}
