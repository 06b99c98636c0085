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
import { Packr, Unpackr } from 'msgpackr';

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

const plainPackr = createPackr();
const referencePackr = createPackr({ structuredClone: true });
const graphUnpackr = createUnpackr({ structuredClone: true });

/**
 * Encodes a graph with every supported type intact. The result is a view into the packer's
 * buffer: copy it before the next call.
 */
export function encodeGraph(root: object, classKeyOf: ClassKeyOf): Uint8Array {
  const survey = new Survey(classKeyOf);
  survey.object(root);
  const { shared, classes, patches } = survey;
  const packr = shared || classes.length > 0 || patches.length > 0 ? referencePackr : plainPackr;
  return packr.pack([root, classes, patches]);
}

/** Decodes what encodeGraph wrote; hands class instances to `adopt`. */
export function decodeGraph(bytes: Uint8Array, adopt: AdoptInstance): unknown {
  const [root, classes, patches] = graphUnpackr.unpack(bytes) as [unknown, unknown[], unknown[]];
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

/** String.prototype.isWellFormed is in Node 20 but not in the ES2023 lib this project targets. */
function isWellFormed(text: string): boolean {
  return (text as string & { isWellFormed(): boolean }).isWellFormed();
}

function isNegativeZero(value: number): boolean {
  return value === 0 && 1 / value < 0;
}

/** One walk over the graph: identity, class instances, and the values msgpackr would alter. */
class Survey {
  readonly seen = new Set<object>();
  readonly classes: unknown[] = [];
  readonly patches: unknown[] = [];
  shared = false;

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
        if (value !== null) this.object(value);
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
    if (typeof key === 'object' && key !== null) this.object(key);
  }

  object(object: object): void {
    if (this.seen.has(object)) {
      this.shared = true;
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

/** Built-ins that msgpackr writes whole (bytes, time, pattern); nothing inside to survey. */
function isOpaqueBuiltin(object: object): boolean {
  return ArrayBuffer.isView(object) || object instanceof ArrayBuffer ||
    object instanceof Date || object instanceof RegExp || object instanceof Error;
}
