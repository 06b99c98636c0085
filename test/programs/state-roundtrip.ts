// A program that uses the state API exactly as transformer-emitted code does. `save FILE`
// builds every supported kind of value and writes the snapshot; started with RPCMIG_RESTORE
// it restores and prints `verdict: ok` or what differs. STATE_BUILD=changed|missing|new
// makes it a different build (a changed type, a removed variable, an added variable).
// `rehearse MAX_BYTES` rehearses a snapshot (rehearseSnapshot) and prints whether it ran and
// whether the state is as before.
import { readFileSync } from 'node:fs';
import { captureState, program, rehearseSnapshot, writeSnapshot } from '../../runtime/state.js';
import { sameGraph } from '../helpers/same-graph.js';

class Session {
  self?: Session;
  friend?: object;
  constructor(readonly user: string) {}
  greet(): string { return `hello ${this.user}`; }
}

const variant = process.env.STATE_BUILD ?? '';
const K = (name: string) => `roundtrip.ts#${name}`;

function stringMap(size: number, value: (i: number) => string): Map<string, string> {
  return new Map(Array.from({ length: size }, (_, i) => [`key ${i}`, value(i)]));
}

function build(): Record<string, unknown> {
  const bigShared = stringMap(1100, (i) => `shared ${i}`);
  const shared = { name: 'shared' };
  const session = new Session('alice');
  session.self = session;
  session.friend = shared;
  const sparse: unknown[] = [1, , 3];
  sparse[7] = 'end';
  const cyclic: Record<string, unknown> = { label: 'loop' };
  cyclic.me = cyclic;
  const ab = new ArrayBuffer(4);
  new Uint8Array(ab).set([9, 8, 7, 6]);
  return {
    numbers: [0, -0, 1.5, -7, 2 ** 53 + 2, NaN, Infinity, -Infinity, Number.MIN_VALUE, 2 ** 31, -(2 ** 31) - 1, -0.0001],
    bigints: [0n, -1n, 2n ** 63n - 1n, 2n ** 64n - 1n, -(2n ** 63n), 2n ** 64n, -(2n ** 200n) + 7n, 3n ** 2000n],
    strings: ['', 'plain', 'ünïcödé', '日本語', '😀 emoji', 'lone \ud800 high', 'lone \udc00 low', 'x'.repeat(70000)],
    misc: { t: true, f: false, n: null, u: undefined, nested: { deeper: [undefined, null] }, negZero: -0 },
    sparse,
    collections: { map: new Map<unknown, unknown>([['a', 1], [2, 'b'], [shared, -0]]), set: new Set([1, 'two', shared]) },
    dates: [new Date(0), new Date(1700000000123), new Date(NaN), new Date(-1e12), new Date(8.64e15)],
    regexps: [/a+b/gi, /^\d{3}$/mu, new RegExp('x', 'y')],
    binary: {
      buffer: Buffer.from('buf'), u8: new Uint8Array([1, 2]), u8c: new Uint8ClampedArray([255]),
      i8: new Int8Array([-1]), i16: new Int16Array([-300]), u16: new Uint16Array([65535]),
      i32: new Int32Array([-7]), u32: new Uint32Array([4e9]), f32: new Float32Array([1.5]),
      f64: new Float64Array([-0, NaN]), bi64: new BigInt64Array([-5n]), bu64: new BigUint64Array([2n ** 64n - 1n]),
      ab, empty: new Uint8Array(0),
    },
    shared,
    cyclic,
    session,
    nested: { level1: { level2: [{ level3: new Map([['deep', new Set([shared])]]) }] } },
    nullProto: Object.assign(Object.create(null) as object, { bare: 1 }),
    // Maps of 1,024+ strings travel as string tables, written in slices of 16,384 entries: plain,
    // two-byte and lone-surrogate values,
    // one under an array with a hole beside a class instance, one reached twice (packed in place).
    bigMap: stringMap(40_000, (i) => (i % 3 === 0 ? `värde ${i} 日本` : i % 7 === 0 ? `lone \ud800 ${i}` : `value ${i}`)),
    underHole: [, { session: new Session('bob'), table: stringMap(1500, (i) => `v${i}`) }],
    twice: [bigShared, { again: bigShared }],
  };
}

const expected = build();
const names = Object.keys(expected).filter((name) => !(variant === 'missing' && name === 'dates'));
const manifest: Record<string, string> = {};
for (const name of names) manifest[K(name)] = `fp-${name}${variant === 'changed' && name === 'strings' ? '-v2' : ''}`;
if (variant === 'new') manifest[K('added')] = 'fp-added';

const __rpcmig_state = program(manifest);
__rpcmig_state.registerClass(K('Session'), Session);
const restoring = process.env.RPCMIG_RESTORE !== undefined;
const actual: Record<string, unknown> = {};
for (const name of names) {
  actual[name] = __rpcmig_state.restore(K(name), restoring ? 'initial' : expected[name]);
  __rpcmig_state.register(K(name), () => actual[name]);
}
const added = variant === 'new' ? __rpcmig_state.restore(K('added'), 'fresh') : undefined;

/** Declared after the variables that hold its instances, as in many modules. */
class Later {
  constructor(readonly n: number) {}
}
__rpcmig_state.registerClass(K('Later'), Later);
if (!restoring) actual.nested = { ...(actual.nested as object), later: new Later(7) };
expected.nested = { ...(expected.nested as object), later: new Later(7) };

const [mode, file] = process.argv.slice(2);
if (mode === 'rehearse') {
  const before = captureState();
  const ran = rehearseSnapshot(Number(file), 3);
  console.log(`rehearsed: ${ran}; the state ${captureState().equals(before) ? 'is unchanged' : 'changed'}`);
} else if (mode === 'save') {
  // What a migration's snapshot streams to its file is what captureState() makes in memory.
  const size = writeSnapshot(file);
  console.log(readFileSync(file).equals(captureState()) ? `saved ${size} bytes` : 'the snapshot differs from captureState()');
} else {
  const expectedNow = Object.fromEntries(names.map((name) => [name, expected[name]]));
  const problems = sameGraph(expectedNow, actual);
  if (added !== undefined && added !== 'fresh') problems.push(`added is ${String(added)}, not its initialiser`);
  const greeting = (actual.session as Session).greet?.();
  if (greeting !== 'hello alice') problems.push('session lost its class');
  console.log(problems.length === 0 ? 'verdict: ok' : `verdict: ${problems.join('\n')}`);
}
