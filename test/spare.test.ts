// Spares (DESIGN §3 step 2): a daemon keeps a Node process started ahead of moves; a move's
// standby starts in it, and one that preloads the runtime of the program that last arrived
// starts warm. The guarantees of a move hold with it: every call exactly once, an abort ends
// what the move started and leaves the source serving; a spare ends with its daemon, and
// `--spares 0` keeps none.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { breakdown, Cluster, COUNTER, sparesOf } from './helpers/cluster.js';
import { blanksOf, type DaemonProcess } from './helpers/daemon.js';
import { isAlive, ROOT, waitFor } from './helpers/process.js';

interface Counter {
  incr(by?: number): number;
  get(): number;
  where(): { pid: number; moves: number; startedAt: number[] };
}

const cluster = new Cluster();

test.after(() => cluster.close());

const counterOn = (daemon: DaemonProcess) => cluster.named<Counter>(COUNTER, daemon, 'spared');

const cmdline = (pid: number): string => {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'latin1').replace(/\0+/g, ' ').trim();
  } catch {
    return '';
  }
};

/** The standby the destination's log names for the move of `name`, numbered `nth` from 0, and whether it was a spare. */
function standbyOf(daemon: DaemonProcess, name: string, nth = 0): { id: string; pid: number; spare: boolean } {
  const match = [...daemon.stderr().matchAll(new RegExp(`migration (\\w+): standby for ${name} pid (\\d+)( \\(a spare\\))?`, 'g'))][nth];
  assert.ok(match, `no standby for ${name} (#${nth}) in:\n${daemon.stderr()}`);
  return { id: match[1], pid: Number(match[2]), spare: match[3] !== undefined };
}

const oneSpare = (daemon: DaemonProcess) => waitFor(() => sparesOf(daemon.address).length === 1, 10_000);

test('a move runs its standby in a spare, which then preloads that program for the next move; every call counts once', async () => {
  const [a, b] = [await cluster.daemon(), await cluster.daemon()];
  assert.ok(await oneSpare(a) && await oneSpare(b), 'each daemon keeps one spare');
  const [idle] = sparesOf(b.address);
  assert.match(cmdline(idle), /daemon\/spare\.js$/, 'a first spare preloads nothing');
  const { name, client } = await counterOn(a);
  let acknowledged = 0;
  const errors: string[] = [];
  let running = true;
  const load = (async () => {
    for (let round = 0; running && round < 200_000; round++) {
      await client.incr(1).then(() => acknowledged++, (error: Error) => errors.push(error.message));
    }
  })();
  breakdown(await cluster.migrate(name, a, b, ['--grace', '1']));
  const first = standbyOf(b, name);
  assert.ok(first.spare && first.pid === idle, `the move took the spare (${idle}): ${JSON.stringify(first)}`);
  assert.ok(cmdline(first.pid).startsWith(`rpcmig move ${first.id}`), `its title names the move: ${cmdline(first.pid)}`);
  assert.is((await client.where()).pid, first.pid, 'the spare serves');
  // Another spare follows, preloading the standby of the program that arrived.
  assert.ok(await waitFor(() => sparesOf(b.address).some((pid) => /programs\/\w+\/node_modules\/rpcmig\/dist\/runtime\/standby\.js$/.test(cmdline(pid))), 10_000),
    `no spare preloads the program: ${sparesOf(b.address).map(cmdline)}`);
  const [warm] = sparesOf(b.address);
  breakdown(await cluster.migrate(name, b, a, ['--grace', '1']));
  await new Promise((resolve) => setTimeout(resolve, 300));
  breakdown(await cluster.migrate(name, a, b, ['--grace', '1']));
  const again = standbyOf(b, name, 1);
  assert.ok(again.spare && again.pid === warm, `the second move to b took the warm spare (${warm}): ${JSON.stringify(again)}`);
  assert.is((await client.where()).pid, warm);
  await new Promise((resolve) => setTimeout(resolve, 150));
  running = false;
  await load;
  assert.equal(errors, [], 'no call failed');
  assert.ok(acknowledged > 100, `only ${acknowledged} increments`);
  assert.is(await client.get(), acknowledged, 'every acknowledged increment counted once');
  assert.is((await client.where()).moves, 3);
  await cluster.end([a, b]);
});

test('an aborted move ends the spare it took; the source serves on with its state; another spare follows', async () => {
  const a = await cluster.daemon();
  const b = await cluster.daemon({ RPCMIG_FAILPOINTS: 'arrive.start.before=error' });
  assert.ok(await oneSpare(b));
  const [idle] = sparesOf(b.address);
  const { name, client } = await counterOn(a);
  await client.incr(41);
  const result = await cluster.migrate(name, a, b, ['--grace', '1']);
  assert.is(result.code, 9, result.stderr);
  assert.match(result.stderr, /start failed/);
  const taken = standbyOf(b, name);
  assert.ok(taken.spare && taken.pid === idle, JSON.stringify(taken));
  assert.ok(await waitFor(() => !isAlive(taken.pid), 5000), 'the standby the spare became is ended');
  assert.is(await client.incr(1), 42, 'the source serves on with its state');
  assert.ok(await waitFor(() => sparesOf(b.address).length === 1 && !sparesOf(b.address).includes(idle), 10_000), 'another spare is ready');
  await cluster.end([a, b]);
});

test('a spare ends with its daemon, even one killed', async () => {
  const a = await cluster.daemon();
  assert.ok(await oneSpare(a));
  const [spare] = sparesOf(a.address);
  process.kill(a.pid, 'SIGKILL');
  assert.ok(await waitFor(() => !isAlive(spare), 5000), `spare ${spare} outlived its daemon`);
  await cluster.end([a]);
});

test('--spares 0 keeps none: the standby starts cold and the move completes', async () => {
  const a = await cluster.daemon();
  const b = await cluster.daemon({}, ['--spares', '0']);
  await new Promise((resolve) => setTimeout(resolve, 500));
  assert.equal(sparesOf(b.address), []);
  const { name, client } = await counterOn(a);
  await client.incr(7);
  breakdown(await cluster.migrate(name, a, b, ['--grace', '1']));
  const standby = standbyOf(b, name);
  assert.not.ok(standby.spare);
  assert.is((await client.where()).pid, standby.pid);
  assert.is(await client.incr(1), 8);
  await cluster.end([a, b]);
});

test('a CommonJS program moves through a spare too, warm the second time', async () => {
  const program = join(cluster.dir, 'cjs-program');
  mkdirSync(program, { recursive: true });
  cpSync(join(ROOT, 'fixtures', 'node_modules'), join(program, 'node_modules'), { recursive: true });
  writeFileSync(join(program, 'package.json'), JSON.stringify({ name: 'cjs-program', private: true, type: 'commonjs' }));
  writeFileSync(join(program, 'server.js'), [
    "const { serve } = require('rpcmig');",
    'let calls = 0;',
    "serve(process.argv[2], { hello: () => ({ calls: ++calls, pid: process.pid, main: require.main === module }) })",
    "  .then((server) => console.log(`listening ${server.address}`), (error) => { console.error(error); process.exit(1); });",
  ].join('\n'));
  const [a, b] = [await cluster.daemon(), await cluster.daemon()];
  assert.ok(await oneSpare(b));
  await cluster.server(join(program, 'server.js'), a, ['cjs']);
  const client = await cluster.connect<{ hello(): { calls: number; pid: number; main: boolean } }>('cjs', a);
  assert.is((await client.hello()).calls, 1);
  breakdown(await cluster.migrate('cjs', a, b, ['--grace', '0.5']));
  const there = await client.hello();
  assert.is(there.pid, standbyOf(b, 'cjs').pid);
  assert.ok(there.main, 'the entry runs as the main module');
  assert.ok(await waitFor(() => sparesOf(b.address).some((pid) => /standby\.js$/.test(cmdline(pid))), 10_000), 'the next spare preloads it');
  breakdown(await cluster.migrate('cjs', b, a, ['--grace', '0.5']));
  breakdown(await cluster.migrate('cjs', a, b, ['--grace', '0.5']));
  const again = standbyOf(b, 'cjs', 1);
  assert.ok(again.spare);
  assert.is((await client.hello()).pid, again.pid);
  // The spare's warm-up ran the console's code without writing: the program's log holds its own lines.
  const log = [...b.stderr().matchAll(/standby for cjs pid \d+ \(a spare\) \(log (.+)\)/g)][1]?.[1];
  assert.ok(log, `no log named for the second standby in:\n${b.stderr()}`);
  const lines = readFileSync(log, 'utf8').split('\n').filter((line) => line !== '');
  assert.equal(lines.filter((line) => !line.startsWith('rpcmig')), [`listening ${(await cluster.serving(b, 'cjs')).address}`], `the log: ${lines.join(' | ')}`);
  await cluster.end([a, b]);
});

test('a first move writes its files into the destination\'s blank files, which the daemon makes again; a restart keeps them', async () => {
  const blanks = 48; // the tests' daemons keep 48 (test/helpers/daemon.ts); a fixture program has more files
  const a = await cluster.daemon();
  const b = await cluster.restartable('blanks');
  const blankDir = join(b.spool, 'blobs', 'blank');
  const inodes = () => new Map(readdirSync(blankDir).map((name) => [name, statSync(join(blankDir, name)).ino]));
  assert.ok(await waitFor(() => blanksOf(b.daemon) === blanks, 10_000), `${blanksOf(b.daemon)} blanks`);
  const before = inodes();
  const { name, client } = await counterOn(a);
  await client.incr();
  breakdown(await cluster.migrate(name, a, b.daemon, ['--grace', '0.2']));
  assert.is(await client.incr(), 2);
  const blobs = new Set(readdirSync(join(b.spool, 'blobs')).filter((n) => /^[0-9a-f]{64}$/.test(n)).map((n) => statSync(join(b.spool, 'blobs', n)).ino));
  assert.ok(blobs.size > blanks, `${blobs.size} blobs`);
  assert.ok([...before.values()].every((ino) => blobs.has(ino)), 'every blank became a blob');
  assert.ok(await waitFor(() => blanksOf(b.daemon) === blanks, 10_000), `made again: ${blanksOf(b.daemon)}`);
  const made = inodes();
  assert.ok([...made.values()].every((ino) => !blobs.has(ino)), 'the new blanks are new files');
  await cluster.end([a, b.daemon]);
  const restarted = await b.restart();
  await waitFor(() => blanksOf(restarted) === blanks, 10_000);
  assert.equal(inodes(), made, 'the restarted daemon kept its blanks');
  await cluster.end([restarted]);
});

test('--spares takes an integer from 0 to 16, --blanks one from 0 to 65536', async () => {
  const cases: Array<[string, string]> = [['--spares', '17'], ['--spares', '1.5'], ['--spares', 'two'], ['--blanks', '65537'], ['--blanks', '-1'], ['--blanks', '1e3']];
  for (const [option, bad] of cases) {
    const result = await cluster.cli(['daemon', `${option}=${bad}`, '--listen', '127.0.0.1:0', '--dir', `${cluster.dir}/unused`]);
    assert.is(result.code, 2, `${option} ${bad}: ${result.stderr}`);
    assert.match(result.stderr, option === '--spares' ? /--spares must be an integer from 0 to 16/ : /--blanks must be an integer from 0 to 65536/);
  }
  assert.not.ok(existsSync(`${cluster.dir}/unused`), 'no spool was made');
});

test.run();
