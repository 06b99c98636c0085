// The values the wire carries: the state file's fidelity (bigint of any size, Set, Date,
// typed arrays, undefined members; codec.ts) in plain MessagePack maps, so that any
// MessagePack-RPC client reads and writes plain data and its maps arrive as plain objects.
import { addExtension, Packr, Unpackr, type Options } from 'msgpackr';

/**
 * codec.ts's value options without its records: records need a shared structure table, which
 * a plain client does not have, and with them off a MessagePack map decodes to an object.
 */
const OPTIONS: Options = {
  moreTypes: true,
  useToJSON: false,
  copyBuffers: true,
  int64AsType: 'bigint',
  useRecords: false,
  mapsAsObjects: true,
};

/** Extension type of a Map: tag then `[key, value, key, value, ...]` (msgpackr's Set is tagged the same way). */
const MAP_TYPE = 0x6d;

/** msgpackr writes every Map as a MessagePack map, so a Map travels as one of these instead. */
class TaggedMap {
  constructor(readonly flat: unknown[]) {}
}

addExtension({
  Class: TaggedMap,
  type: MAP_TYPE,
  write: (tagged: TaggedMap) => tagged.flat,
  read: (flat: unknown[]) => {
    const map = new Map<unknown, unknown>();
    for (let i = 0; i + 1 < flat.length; i += 2) map.set(flat[i], flat[i + 1]);
    return map;
  },
});

export function createWirePackr(): Packr {
  return new Packr(OPTIONS);
}

export function createWireUnpackr(): Unpackr {
  return new Unpackr(OPTIONS);
}

/** Deeper than this is taken for a cycle, which the wire cannot carry (no structured clone). */
const MAX_DEPTH = 256;

/**
 * `value` with every Map in it replaced by a TaggedMap. Containers on the way to a Map are
 * copied; a value holding no Map (the common case) is returned as it is, with nothing copied.
 */
export function tagMaps(value: unknown, depth = 0): unknown {
  if (typeof value !== 'object' || value === null) return value;
  if (depth > MAX_DEPTH) throw new Error(`a value nested deeper than ${MAX_DEPTH} levels, or cyclic, cannot be sent`);
  if (Array.isArray(value)) return tagArray(value, depth);
  if (value instanceof Map) {
    const flat: unknown[] = [];
    for (const [key, item] of value) flat.push(tagMaps(key, depth + 1), tagMaps(item, depth + 1));
    return new TaggedMap(flat);
  }
  if (value instanceof Set) {
    const members = [...value];
    const tagged = tagArray(members, depth);
    return tagged === members ? value : new Set(tagged);
  }
  if (ArrayBuffer.isView(value) || value instanceof Date || value instanceof RegExp || value instanceof Error) return value;
  return tagObject(value as Record<string, unknown>, depth);
}

function tagArray(array: unknown[], depth: number): unknown[] {
  let copy: unknown[] | undefined;
  for (let i = 0; i < array.length; i++) {
    const tagged = tagMaps(array[i], depth + 1);
    if (tagged !== array[i]) (copy ??= array.slice())[i] = tagged;
  }
  return copy ?? array;
}

function tagObject(object: Record<string, unknown>, depth: number): unknown {
  let copy: Record<string, unknown> | undefined;
  for (const key in object) {
    const tagged = tagMaps(object[key], depth + 1);
    if (tagged !== object[key]) (copy ??= { ...object })[key] = tagged;
  }
  return copy ?? object;
}
