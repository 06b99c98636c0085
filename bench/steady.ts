// The steady-state cost of @migrate: calls/s of fixtures/five (five annotated variables) as
// the transformer builds it, against the same source compiled without the transformer, same
// run, turns taken in rotation. Prints a table and writes its section of bench/RESULTS.md.
//   node dist/bench/steady.js
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import ts from 'typescript';
import { connect, type Client } from '../runtime/index.js';
import { ROOT, startNode, stop, type Started } from '../test/helpers/process.js';
import { machine, median, writeSection } from './results.js';

const SOURCE = join(ROOT, 'fixtures', 'five', 'server.ts');
const BUILT = join(ROOT, 'fixtures', 'dist', 'five', 'server.js');
const PLAIN = join(ROOT, 'fixtures', 'dist', 'five', 'plain.js');
const TURNS = 5;
const TURN_MS = 1500;
const IN_FLIGHT = 64;

interface Five {
  add(a: number, b: number): number;
}

/** The same module, compiled by TypeScript alone: the annotations stay comments. */
function compilePlain(): void {
  const { outputText } = ts.transpileModule(readFileSync(SOURCE, 'utf8'), {
    compilerOptions: { target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.ES2022 },
  });
  writeFileSync(PLAIN, outputText);
}

/** Calls/s of `add` over `connections` connections with IN_FLIGHT calls each, for `ms`. */
async function turn(clients: Client<Five>[], ms: number): Promise<number> {
  const until = performance.now() + ms;
  let calls = 0;
  await Promise.all(clients.flatMap((client) => Array.from({ length: IN_FLIGHT / clients.length }, async () => {
    for (let i = 0; performance.now() < until && i < 100_000_000; i++) {
      await client.add(i, 1);
      calls++;
    }
  })));
  return calls / (ms / 1000);
}

async function main(): Promise<void> {
  compilePlain();
  const servers: Started[] = [];
  try {
    const rows: string[] = [];
    for (const connections of [1, 16]) {
      const rates = { transformed: [] as number[], plain: [] as number[] };
      for (const [label, script] of [['transformed', BUILT], ['plain', PLAIN]] as const) {
        servers.push(await startNode(script, { args: [label], cwd: join(ROOT, 'fixtures') }));
        void label;
      }
      const [built, plain] = servers.slice(-2);
      const connectTo = async (s: Started) => {
        const [host, port] = s.ready[0].split(':');
        return Promise.all(Array.from({ length: connections }, () => connect<Five>({ host, port: Number(port) })));
      };
      const builtClients = await connectTo(built);
      const plainClients = await connectTo(plain);
      await turn(builtClients, 300);
      await turn(plainClients, 300);
      for (let t = 0; t < TURNS; t++) {
        rates.transformed.push(await turn(builtClients, TURN_MS));
        rates.plain.push(await turn(plainClients, TURN_MS));
      }
      await Promise.all([...builtClients, ...plainClients].map((c) => c.close()));
      const a = median(rates.transformed);
      const b = median(rates.plain);
      rows.push(`| ${connections} connection${connections > 1 ? 's' : ''}, ${IN_FLIGHT} calls in flight | ${Math.round(a).toLocaleString('en-US')} | ${Math.round(b).toLocaleString('en-US')} | ${(a / b).toFixed(3)} |`);
      console.log(rows.at(-1));
    }
    const markdown = [
      '## bench/steady — calls/s with five @migrate variables vs the same server built without the transformer',
      '',
      `Machine: ${machine()}. Command: \`node dist/bench/steady.js\`. fixtures/five/server.ts built by tspc with the transformer, and the same file transpiled by TypeScript alone; \`add(a, b)\` in a closed loop, median of ${TURNS} turns of ${TURN_MS} ms each, taken in rotation. Goal ≥ 0.97×.`,
      '',
      '| row | transformed calls/s | plain calls/s | transformed ÷ plain |',
      '| --- | ---: | ---: | ---: |',
      ...rows,
    ].join('\n');
    writeSection('steady', markdown);
  } finally {
    await Promise.all(servers.map((s) => stop(s.pid)));
  }
}

void main().catch((error: Error) => {
  console.error(error);
  process.exitCode = 1;
});
