// bench/state (issue 2): capture + restore of large state against v8.serialize/deserialize of
// the same values in the same run. Prints a table and writes its section of bench/RESULTS.md.
// Run: node dist/bench/state.js
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { deserialize, serialize, setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { decodeState, encodeStateParts } from '../runtime/state.js';
import { machine, writeSection } from './results.js';

const RUNS = 5;
const ROOT = join(__dirname, '..', '..');
const KEY = 'bench.ts#state';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

function mapWorkload(): Map<string, string> {
  const map = new Map<string, string>();
  for (let i = 0; i < 1_000_000; i++) map.set(`word:${i.toString(36)}:${i % 9973}`, `meaning of ${i} ${'.'.repeat(i % 24)}`);
  return map;
}

function objectsWorkload(): object[] {
  const objects: object[] = [];
  for (let i = 0; i < 1_000_000; i++) objects.push({ id: i, name: `n${i}`, score: i / 3, active: i % 2 === 0, tag: null });
  return objects;
}

interface Sample { capture: number; restore: number; bytes: number }

function time<T>(work: () => T): [number, T] {
  gc();
  const start = process.hrtime.bigint();
  const result = work();
  return [Number(process.hrtime.bigint() - start) / 1e6, result];
}

function rpcmigOnce(value: unknown): Sample {
  // Capture ends with the bytes a snapshot writes, header and body (no copy into one buffer);
  // restore starts from the file as read back whole.
  const [capture, parts] = time(() => encodeStateParts({ [KEY]: value }, new Map([[KEY, '0']])));
  const file = Buffer.concat(parts);
  const [restore] = time(() => decodeState(file, { [KEY]: '0' }));
  return { capture, restore, bytes: file.length };
}

function v8Once(value: unknown): Sample {
  const [capture, bytes] = time(() => serialize(value));
  const [restore] = time(() => deserialize(bytes));
  return { capture, restore, bytes: bytes.length };
}

function median(samples: Sample[], field: 'capture' | 'restore' | 'total'): number {
  const values = samples.map((s) => (field === 'total' ? s.capture + s.restore : s[field])).sort((a, b) => a - b);
  return values[values.length >> 1];
}

/** Alternates the two so that machine noise hits both alike; the first round warms up. */
function measure(value: unknown): { rpcmig: Sample[]; v8: Sample[] } {
  rpcmigOnce(value);
  v8Once(value);
  const rpcmig: Sample[] = [];
  const v8: Sample[] = [];
  for (let i = 0; i < RUNS; i++) {
    rpcmig.push(rpcmigOnce(value));
    v8.push(v8Once(value));
  }
  return { rpcmig, v8 };
}

function rows(name: string, result: { rpcmig: Sample[]; v8: Sample[] }): string[] {
  const line = (who: string, s: Sample[]) =>
    `| ${name} | ${who} | ${median(s, 'capture').toFixed(0)} | ${median(s, 'restore').toFixed(0)} | ${median(s, 'total').toFixed(0)} | ${s[0].bytes} |`;
  const ratio = (field: 'capture' | 'restore' | 'total') => (median(result.rpcmig, field) / median(result.v8, field)).toFixed(2);
  const size = (result.rpcmig[0].bytes / result.v8[0].bytes).toFixed(2);
  return [line('rpcmig', result.rpcmig), line('v8', result.v8), `| ${name} | rpcmig ÷ v8 | ${ratio('capture')} | ${ratio('restore')} | ${ratio('total')} | ${size} |`];
}

function runtimeSize(): string {
  const files = ['state.js', 'codec.js', 'tables.js', 'statefile.js'].map((f) => join(ROOT, 'dist', 'runtime', f));
  const own = files.reduce((sum, file) => sum + statSync(file).size, 0);
  const msgpackr = statSync(require.resolve('msgpackr')).size;
  return `Runtime for state (dist/runtime/state.js + codec.js + tables.js + statefile.js): ${own} bytes; ` +
    `plus msgpackr (${require.resolve('msgpackr').replace(/.*node_modules\//, '')}): ${msgpackr} bytes.`;
}

function main(): void {
  const table = ['| workload | codec | capture ms | restore ms | round trip ms | bytes |', '| --- | --- | ---: | ---: | ---: | ---: |'];
  let map: Map<string, string> | undefined = mapWorkload();
  table.push(...rows('Map<string,string>, 1,000,000 entries', measure(map)));
  map = undefined;
  table.push(...rows('1,000,000 small objects', measure(objectsWorkload())));
  const markdown = [
    '## bench/state — capture + restore vs v8.serialize/deserialize',
    '',
    `Machine: ${machine()}. Command: \`node dist/bench/state.js\`. ` +
      `Median of ${RUNS} alternating runs after one warm-up, GC before each timed step. rpcmig capture = ` +
      'survey + msgpackr pack (a large Map of strings: V8\'s serializer) + SHA-256 + header, ending with header and ' +
      'body as a snapshot writes them (not joined into one buffer); restore = header + SHA-256 check + unpack ' +
      '(string tables: read by rpcmig itself), from the whole file.',
    '',
    ...table,
    '',
    runtimeSize(),
  ].join('\n');
  console.log(markdown);
  writeSection('state', markdown);
}

main();
