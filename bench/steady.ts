// Steady-state costs, calls/s of `add(a, b)` in a closed loop, same run, turns in rotation:
//   1. @migrate: fixtures/five (five annotated variables) as the transformer builds it, against
//      the same source compiled without the transformer (issue 5, goal ≥ 0.97×);
//   2. exactly once: clients with call ids (hello, completion records on the server) against
//      clients without (issue 6, goal ≥ 0.95×).
// Prints tables and writes its section of bench/RESULTS.md.
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
const TURNS = 10;
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

/** Calls/s of `add` over the clients, IN_FLIGHT calls in flight in all, for `ms`. */
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

async function clientsOf(server: Started, connections: number, exactlyOnce: boolean): Promise<Client<Five>[]> {
  const [host, port] = server.ready[0].split(':');
  return Promise.all(Array.from({ length: connections }, () => connect<Five>({ host, port: Number(port), exactlyOnce })));
}

/** Median calls/s of two setups, measured in alternating turns. */
async function compare(a: Client<Five>[], b: Client<Five>[]): Promise<[number, number]> {
  await turn(a, 300);
  await turn(b, 300);
  const rates: [number[], number[]] = [[], []];
  // ABBA order: a drift over the run (heap growth, CPU frequency) falls on both sides alike.
  for (let t = 0; t < TURNS; t++) {
    const order: Array<[0 | 1, Client<Five>[]]> = t % 2 === 0 ? [[0, a], [1, b]] : [[1, b], [0, a]];
    for (const [side, clients] of order) rates[side].push(await turn(clients, TURN_MS));
  }
  await Promise.all([...a, ...b].map((client) => client.close()));
  return [median(rates[0]), median(rates[1])];
}

const rate = (x: number) => Math.round(x).toLocaleString('en-US');

async function main(): Promise<void> {
  compilePlain();
  const servers: Started[] = [];
  try {
    const built = await startNode(BUILT, { args: ['built'], cwd: join(ROOT, 'fixtures') });
    servers.push(built);
    const plain = await startNode(PLAIN, { args: ['plain'], cwd: join(ROOT, 'fixtures') });
    servers.push(plain);
    // The same build in a second process: how far two identical servers differ in this run.
    const twin = await startNode(PLAIN, { args: ['twin'], cwd: join(ROOT, 'fixtures') });
    servers.push(twin);
    const migrateRows: string[] = [];
    const onceRows: string[] = [];
    for (const connections of [1, 16]) {
      const label = `${connections} connection${connections > 1 ? 's' : ''}, ${IN_FLIGHT} calls in flight`;
      const [withT, withoutT] = await compare(await clientsOf(built, connections, false), await clientsOf(plain, connections, false));
      const [one, other] = await compare(await clientsOf(plain, connections, false), await clientsOf(twin, connections, false));
      migrateRows.push(`| ${label} | ${rate(withT)} | ${rate(withoutT)} | ${(withT / withoutT).toFixed(3)} | ${(one / other).toFixed(3)} |`);
      const [once, bare] = await compare(await clientsOf(built, connections, true), await clientsOf(built, connections, false));
      onceRows.push(`| ${label} | ${rate(once)} | ${rate(bare)} | ${(once / bare).toFixed(3)} |`);
      console.log(migrateRows.at(-1), onceRows.at(-1));
    }
    const markdown = [
      '## bench/steady — what @migrate and exactly-once cost per call',
      '',
      `Machine: ${machine()}. Command: \`node dist/bench/steady.js\`. \`add(a, b)\` in a closed loop, ${IN_FLIGHT} calls in flight, median of ${TURNS} turns of ${TURN_MS} ms each, in ABBA order; each server in its own process.`,
      '',
      'fixtures/five/server.ts built by tspc with the transformer, against the same file transpiled by TypeScript alone (clients without call ids). Goal ≥ 0.97×. The transformer adds no code to a call (its output differs from the plain build only in module initialisation), so the last column, the plain build against a second process of itself in the same run, is the spread that any ratio here carries.',
      '',
      '| row | transformed calls/s | plain calls/s | transformed ÷ plain | plain ÷ plain (A/A) |',
      '| --- | ---: | ---: | ---: | ---: |',
      ...migrateRows,
      '',
      'The transformed server, called by clients with call ids (hello; the server keeps completion records) and by clients without (`exactlyOnce: false`). Goal ≥ 0.95×.',
      '',
      '| row | with ids calls/s | without calls/s | with ÷ without |',
      '| --- | ---: | ---: | ---: |',
      ...onceRows,
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
