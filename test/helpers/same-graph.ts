// Strict structural equality for restored state: types, prototypes, -0, NaN, array holes,
// and the same pattern of shared references and cycles (a bijection between the graphs).
export function sameGraph(expected: unknown, actual: unknown): string[] {
  const problems: string[] = [];
  const pairs = new Map<object, object>();
  const reverse = new Map<object, object>();

  const compare = (a: unknown, b: unknown, path: string): void => {
    if (typeof a !== typeof b) return void problems.push(`${path}: ${typeof b}, expected ${typeof a}`);
    if (typeof a !== 'object' || a === null || b === null) {
      if (!Object.is(a, b)) problems.push(`${path}: ${String(b)}, expected ${String(a)}`);
      return;
    }
    const x = a as object;
    const y = b as object;
    if (pairs.has(x) || reverse.has(y)) {
      if (pairs.get(x) !== y) problems.push(`${path}: shared reference or cycle not preserved`);
      return;
    }
    pairs.set(x, y);
    reverse.set(y, x);
    if (Object.getPrototypeOf(x) !== Object.getPrototypeOf(y)) return void problems.push(`${path}: wrong prototype`);
    compareContents(x, y, path);
  };

  const compareContents = (x: object, y: object, path: string): void => {
    if (x instanceof Date) return compare(x.getTime(), (y as Date).getTime(), `${path}.getTime()`);
    if (x instanceof RegExp) return compare(`${x}`, `${y as RegExp}`, path);
    if (ArrayBuffer.isView(x) || x instanceof ArrayBuffer) {
      if (!bytes(x).equals(bytes(y as ArrayBufferView))) problems.push(`${path}: bytes differ`);
      return;
    }
    if (x instanceof Map || x instanceof Set) {
      const left = [...x.entries()];
      const right = [...(y as Map<unknown, unknown>).entries()];
      if (left.length !== right.length) return void problems.push(`${path}: size ${right.length}, expected ${left.length}`);
      left.forEach(([k, v], i) => { compare(k, right[i][0], `${path}{key ${i}}`); compare(v, right[i][1], `${path}{${i}}`); });
      return;
    }
    const keys = Reflect.ownKeys(x);
    const otherKeys = Reflect.ownKeys(y);
    if (keys.join() !== otherKeys.join()) return void problems.push(`${path}: keys [${otherKeys.join()}], expected [${keys.join()}]`);
    for (const key of keys) compare((x as Record<PropertyKey, unknown>)[key], (y as Record<PropertyKey, unknown>)[key], `${path}.${String(key)}`);
  };

  compare(expected, actual, '$');
  return problems;
}

function bytes(view: ArrayBufferView | ArrayBuffer): Buffer {
  return ArrayBuffer.isView(view) ? Buffer.from(view.buffer, view.byteOffset, view.byteLength) : Buffer.from(view);
}
