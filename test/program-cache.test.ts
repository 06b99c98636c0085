// The program cache across moves (DESIGN §3 step 2): a second move of a program sends no
// program bytes; a program changed since its last move, while it moves, or where it arrived
// moves on as it is now; a program walked ahead of its first move moves as it is at the move;
// what only devDependencies need stays behind; and the commit waits for the walk that confirms
// the program.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { chmodSync, cpSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { RpcmigError } from '../runtime/index.js';
import { loadKey, openDaemon } from '../runtime/daemonlink.js';
import { breakdown, Cluster, COUNTER } from './helpers/cluster.js';
import type { DaemonProcess } from './helpers/daemon.js';
import { isAlive, ROOT, waitFor } from './helpers/process.js';

interface Counter {
  incr(by?: number): number;
  load(name: string): string;
  where(): { pid: number };
}

const cluster = new Cluster();
let a: DaemonProcess;
let b: DaemonProcess;

test.before(async () => {
  a = await cluster.daemon();
  b = await cluster.daemon();
});
test.after(() => cluster.close());

const counterOn = (daemon: DaemonProcess) => cluster.named<Counter>(COUNTER, daemon, 'cached');

test('the second move of the same program to a host sends no program bytes', async () => {
  const { name } = await counterOn(a);
  const first = breakdown(await cluster.migrate(name, a, b, ['--grace', '0.2']));
  breakdown(await cluster.migrate(name, b, a, ['--grace', '0.2']));
  const again = breakdown(await cluster.migrate(name, a, b, ['--grace', '0.2']));
  assert.is(again.program_bytes_sent, 0);
  assert.match(b.stderr(), new RegExp(`receiving ${name} \\(program [0-9a-f]{12}, in place\\)`), 'the manifest did not travel either');
  const link = await openDaemon(b.address, loadKey(cluster.key.file));
  try {
    const shipment = { id: '0123456789abcdef', name: 'nobody', source: a.address, entry: 'server.js', argv: [], execArgv: [], cwd: '' };
    assert.equal(await link.call('prepare', [{ ...shipment, program: '0'.repeat(64) }]), { known: false, lacking: [] });
    const bad = await link.call('prepare', [{ ...shipment, program: '../x' }]).catch((error: RpcmigError) => error);
    assert.is((bad as RpcmigError).code, 'BAD_REQUEST');
  } finally {
    link.close();
  }
  assert.ok((first.program_bytes_sent as number) >= 0);
});

test('a program changed since its last move is shipped again; the standby started for the old one is ended', async () => {
  const program = join(cluster.dir, 'changing-program');
  cpSync(join(ROOT, 'fixtures'), program, { recursive: true, filter: (path) => !path.includes(`${join('fixtures', 'transform')}`) });
  const server = join(program, 'dist', 'counter', 'server.js');
  await cluster.server(server, a, ['--name', 'unchanged']);
  breakdown(await cluster.migrate('unchanged', a, b, ['--grace', '0.2']));
  const pkg = join(program, 'package.json');
  writeFileSync(pkg, JSON.stringify({ ...JSON.parse(readFileSync(pkg, 'utf8')), description: 'changed' }));
  await cluster.server(server, a, ['--name', 'changed']);
  const moved = breakdown(await cluster.migrate('changed', a, b, ['--grace', '0.2']));
  assert.is(moved.program_bytes_sent, readFileSync(pkg).length, 'the changed file, and only it, travelled');
  assert.match(b.stderr(), /aborted \(the program changed since its last move\)/);
  const standbys = [...b.stderr().matchAll(/standby for changed pid (\d+)/g)].map((match) => Number(match[1]));
  assert.is(standbys.length, 2, b.stderr());
  assert.ok(await waitFor(() => !isAlive(standbys[0])), 'the standby of the old program was ended');
  const client = await cluster.connect<Counter>('changed', b);
  assert.is(await client.incr(1), 1);
  assert.is((await client.where()).pid, standbys[1]);
});

/** A copy of fixtures/ whose files a test may change, and the counter server in it. */
function programCopy(label: string): { server: string; pkg: string } {
  const program = join(cluster.dir, label);
  cpSync(join(ROOT, 'fixtures'), program, { recursive: true, filter: (path) => !path.includes(`${join('fixtures', 'transform')}`) });
  return { server: join(program, 'dist', 'counter', 'server.js'), pkg: join(program, 'package.json') };
}

test('a program changed while it moves: the walk beside the move finds it before the commit; rolled back, the move goes again with the change', async () => {
  // The walk of a program shipped before takes a second longer: the move goes on beside it.
  const src = await cluster.daemon({ RPCMIG_FAILPOINTS: 'rewalk.after=slow' });
  const { server, pkg } = programCopy('rewalked-program');
  await cluster.server(server, src, ['--name', 'rewalk-first']);
  breakdown(await cluster.migrate('rewalk-first', src, b, ['--grace', '0.2']));
  writeFileSync(pkg, JSON.stringify({ ...JSON.parse(readFileSync(pkg, 'utf8')), description: 'changed while moving' }));
  await cluster.server(server, src, ['--name', 'rewalked']);
  const client = await cluster.connect<Counter>('rewalked', src);
  await client.incr(3);
  const moved = breakdown(await cluster.migrate('rewalked', src, b, ['--grace', '0.2']));
  assert.match(src.stderr(), /failpoint rewalk.after: slow/);
  assert.match(src.stderr(), /rewalked's program changed while it moved; moving it again/);
  assert.match(b.stderr(), /aborted \(the program changed since its last move\)/);
  assert.is(moved.program_bytes_sent, readFileSync(pkg).length, 'the changed file, and only it, travelled');
  assert.is(await client.incr(1), 4, 'the state moved once, the rolled-back attempt left it whole');
  const standbys = [...b.stderr().matchAll(/standby for rewalked pid (\d+)/g)].map((match) => Number(match[1]));
  assert.is(standbys.length, 2, b.stderr());
  assert.ok(await waitFor(() => !isAlive(standbys[0])), 'what the rolled-back attempt started was ended');
  assert.is((await client.where()).pid, standbys[1]);
  await cluster.end([src]);
});

/** The tree of the program that the daemon's last arrival of `name` brought (its log names the program's id). */
function treeOf(daemon: DaemonProcess, name: string): string {
  const ids = [...daemon.stderr().matchAll(new RegExp(`receiving ${name} \\(program (\\w+)`, 'g'))].map((match) => match[1]);
  assert.ok(ids.length > 0, daemon.stderr());
  const programs = join(daemon.spool, 'programs');
  const [dir] = readdirSync(programs).filter((entry) => entry.startsWith(ids[ids.length - 1]) && !entry.includes('.'));
  return join(programs, dir);
}

/** Rewrites a file of a program that arrived, in place (through its hard link, as root could despite mode 0444). */
function changeInPlace(path: string, description: string): number {
  const text = JSON.stringify({ ...JSON.parse(readFileSync(path, 'utf8')), description });
  chmodSync(path, 0o644);
  writeFileSync(path, text);
  return Buffer.byteLength(text);
}

test('a program that arrived moves on as it is now: a file changed where it arrived travels, whether changed after its first walk there or before', async () => {
  const [x, y] = [await cluster.daemon(), await cluster.daemon()];
  const { server } = programCopy('arrived-program');
  await cluster.server(server, x, ['--name', 'arrived']);
  const client = await cluster.connect<Counter>('arrived', x);
  await client.incr(2);
  breakdown(await cluster.migrate('arrived', x, y, ['--grace', '0.2']));
  // A second after its arrival the daemon has walked the tree, taking the hashes it was built from.
  await new Promise((resolve) => setTimeout(resolve, 1500));
  changeInPlace(join(treeOf(y, 'arrived'), 'package.json'), 'changed after its first walk');
  breakdown(await cluster.migrate('arrived', y, x, ['--grace', '0.2']));
  assert.is(JSON.parse(readFileSync(join(treeOf(x, 'arrived'), 'package.json'), 'utf8')).description, 'changed after its first walk');
  assert.is(await client.incr(1), 3);
  // At once, before any walk of the tree that just arrived at x.
  const size = changeInPlace(join(treeOf(x, 'arrived'), 'package.json'), 'changed before its first walk');
  const moved = breakdown(await cluster.migrate('arrived', x, y, ['--grace', '0.2']));
  assert.is(moved.program_bytes_sent, size, 'the changed file, and only it, travelled');
  assert.is(JSON.parse(readFileSync(join(treeOf(y, 'arrived'), 'package.json'), 'utf8')).description, 'changed before its first walk');
  assert.is(await client.incr(1), 4);
  await cluster.end([x, y]);
});

test('a server\'s program is walked ahead of its first move; a file changed after that walk travels as it is at the move', async () => {
  const { server, pkg } = programCopy('ahead-program');
  await cluster.server(server, a, ['--name', 'ahead']);
  const client = await cluster.connect<Counter>('ahead', a);
  await client.incr(2);
  assert.ok(await waitFor(() => /ahead: its program \(.*ahead-program\) walked ahead of a move, \d+ entries/.test(a.stderr())), a.stderr());
  writeFileSync(pkg, JSON.stringify({ ...JSON.parse(readFileSync(pkg, 'utf8')), description: 'changed after the walk ahead' }));
  const moved = breakdown(await cluster.migrate('ahead', a, b, ['--grace', '0.2']));
  assert.ok((moved.program_bytes_sent as number) >= readFileSync(pkg).length);
  assert.is(JSON.parse(readFileSync(join(treeOf(b, 'ahead'), 'package.json'), 'utf8')).description, 'changed after the walk ahead');
  assert.is(await client.incr(1), 3);
});

test('what only devDependencies need stays behind: the server imports a dependency after its move, not a dev tool, and one that needs it to start does not move; shipDevDependencies ships them', async () => {
  const { server, pkg } = programCopy('dev-program');
  const modules = join(dirname(pkg), 'node_modules');
  for (const name of ['late', 'devtool']) {
    mkdirSync(join(modules, name));
    writeFileSync(join(modules, name, 'package.json'), JSON.stringify({ name, version: '1.0.0' }));
    writeFileSync(join(modules, name, 'index.js'), `exports.name = ${JSON.stringify(name)};`);
  }
  mkdirSync(join(modules, '.bin'));
  symlinkSync('../devtool/index.js', join(modules, '.bin', 'devtool'));
  const declared = JSON.parse(readFileSync(pkg, 'utf8'));
  writeFileSync(pkg, JSON.stringify({ ...declared, dependencies: { ...declared.dependencies, late: '1.0.0' }, devDependencies: { devtool: '1.0.0' } }));
  await cluster.server(server, a, ['--name', 'dev-only']);
  const client = await cluster.connect<Counter>('dev-only', a);
  await client.incr(2);
  const ahead = /dev-only: its program \(.*dev-program\) walked ahead of a move, \d+ entries; 1 stays behind \(node_modules\/devtool\)/;
  assert.ok(await waitFor(() => ahead.test(a.stderr())), a.stderr());
  breakdown(await cluster.migrate('dev-only', a, b, ['--grace', '0.2']));
  const tree = treeOf(b, 'dev-only');
  assert.ok(existsSync(join(tree, 'node_modules', 'late', 'index.js')) && existsSync(join(tree, 'node_modules', 'rpcmig', 'package.json')));
  assert.not.ok(existsSync(join(tree, 'node_modules', 'devtool')) || existsSync(join(tree, 'node_modules', '.bin')), 'the dev tool and its link stayed behind');
  assert.is(await client.load('late'), 'late', 'a dependency imported after the move');
  assert.is(await client.incr(1), 3);
  const missing = await client.load('devtool').then(() => undefined, (error: Error) => error);
  assert.match(String(missing?.message), /devtool/);
  // A server that needs the dev tool to start (a loader, resolved from its working directory) does not move, and serves on.
  const loader = await cluster.server(server, a, ['--name', 'dev-loader'], {}, { nodeArgs: ['--import', 'devtool'], cwd: dirname(pkg) });
  const loaded = await cluster.connect<Counter>('dev-loader', a);
  await loaded.incr(5);
  const refused = await cluster.migrate('dev-loader', a, b, ['--grace', '0.2']);
  assert.is(refused.code, 9, refused.stderr);
  assert.match(refused.stderr, /Cannot find package 'devtool'[^]*declare it in dependencies, or ship the whole root with "rpcmig": \{ "shipDevDependencies": true \}/);
  assert.equal([await loaded.incr(1), (await loaded.where()).pid], [6, loader.pid], 'the source serves on');
  // The program opts out: the same tree, with its dev tools, moves whole, and the loader with it.
  writeFileSync(pkg, JSON.stringify({ ...JSON.parse(readFileSync(pkg, 'utf8')), rpcmig: { shipDevDependencies: true } }));
  breakdown(await cluster.migrate('dev-loader', a, b, ['--grace', '0.2']));
  assert.match(a.stderr(), /dev-loader's program changed since its last move; shipping it again/, 'the old program\'s failed standby did not fail the move');
  assert.ok(existsSync(join(treeOf(b, 'dev-loader'), 'node_modules', '.bin', 'devtool')));
  assert.is(await loaded.load('devtool'), 'devtool');
  assert.equal(await loaded.incr(1), 7);
  assert.is.not((await loaded.where()).pid, loader.pid, 'imported where it arrived');
});

test('a server in a workspace moves with the packages the workspace hoisted above its root; one installed there after the walk ahead travels', async () => {
  // npm's layout: the app's dependencies in the workspace's node_modules, a package of the workspace linked there.
  const { server, pkg } = programCopy(join('workspace', 'packages', 'app'));
  const [app, workspace] = [dirname(pkg), join(cluster.dir, 'workspace')];
  renameSync(join(app, 'node_modules'), join(workspace, 'node_modules'));
  writeFileSync(join(workspace, 'package.json'), JSON.stringify({ name: 'workspace', private: true, workspaces: ['packages/*'] }));
  const lib = join(workspace, 'packages', 'lib');
  mkdirSync(lib);
  writeFileSync(join(lib, 'package.json'), JSON.stringify({ name: 'lib', version: '1.0.0' }));
  writeFileSync(join(lib, 'index.js'), 'exports.name = "lib";');
  symlinkSync(join('..', 'packages', 'lib'), join(workspace, 'node_modules', 'lib'));
  const declared = JSON.parse(readFileSync(pkg, 'utf8'));
  writeFileSync(pkg, JSON.stringify({ ...declared, dependencies: { ...declared.dependencies, lib: '1.0.0', late: '1.0.0' } }));
  const started = await cluster.server(server, a, ['--name', 'in-workspace'], {}, { cwd: app });
  const client = await cluster.connect<Counter>('in-workspace', a);
  await client.incr(4);
  const ahead = /in-workspace: its program \(.*packages\/app\) walked ahead of a move, \d+ entries; 3 packages come from outside it \(node_modules\/\S+, node_modules\/\S+, node_modules\/\S+\)/;
  assert.ok(await waitFor(() => ahead.test(a.stderr())), a.stderr());
  assert.match(a.stderr().match(ahead)![0], /node_modules\/lib\b/);
  // After the walk ahead, the workspace installs a dependency the app declares: only its node_modules changes.
  mkdirSync(join(workspace, 'node_modules', 'late'));
  writeFileSync(join(workspace, 'node_modules', 'late', 'index.js'), 'exports.name = "late";');
  writeFileSync(join(workspace, 'node_modules', 'late', 'package.json'), JSON.stringify({ name: 'late', version: '1.0.0' }));
  breakdown(await cluster.migrate('in-workspace', a, b, ['--grace', '0.2']));
  const tree = treeOf(b, 'in-workspace');
  assert.ok(['rpcmig/package.json', 'msgpackr/package.json', 'lib/index.js', 'late/index.js'].every((path) => existsSync(join(tree, 'node_modules', path))));
  assert.equal([await client.load('lib'), await client.load('late')], ['lib', 'late'], 'imported where it arrived');
  assert.is(await client.incr(1), 5);
  assert.is.not((await client.where()).pid, started.pid);
});

test('a server that comes back to a host it left brings no program bytes: that host takes the files from its own tree; one changed there since travels', async () => {
  const [x, y] = [await cluster.daemon(), await cluster.daemon()];
  const { server, pkg } = programCopy('returning-program');
  await cluster.server(server, x, ['--name', 'returning']);
  const client = await cluster.connect<Counter>('returning', x);
  await client.incr(2);
  const away = breakdown(await cluster.migrate('returning', x, y, ['--grace', '0.2']));
  assert.ok((away.program_bytes_sent as number) > 0);
  const back = breakdown(await cluster.migrate('returning', y, x, ['--grace', '0.2']));
  assert.is(back.program_bytes_sent, 0);
  assert.match(x.stderr(), /: (\d+) of the \1 files lacking copied from this host's own program trees/);
  assert.is(await client.incr(1), 3);
  assert.is(readFileSync(join(treeOf(x, 'returning'), 'package.json'), 'utf8'), readFileSync(pkg, 'utf8'));
  // Another program, whose package.json alone differs, changed where it started after it left.
  const changed = programCopy('returning-changed');
  const before = JSON.stringify({ ...JSON.parse(readFileSync(changed.pkg, 'utf8')), description: 'as it left' });
  writeFileSync(changed.pkg, before);
  await cluster.server(changed.server, x, ['--name', 'changed-behind']);
  const other = await cluster.connect<Counter>('changed-behind', x);
  breakdown(await cluster.migrate('changed-behind', x, y, ['--grace', '0.2']));
  writeFileSync(changed.pkg, JSON.stringify({ ...JSON.parse(before), description: 'changed after it left' }));
  const returned = breakdown(await cluster.migrate('changed-behind', y, x, ['--grace', '0.2']));
  assert.is(returned.program_bytes_sent, Buffer.byteLength(before), 'the file changed here travelled, as the program has it');
  assert.is(readFileSync(join(treeOf(x, 'changed-behind'), 'package.json'), 'utf8'), before);
  assert.is(await other.incr(1), 1);
  await cluster.end([x, y]);
});

test('the commit waits for the walk beside the move: one that never ends rolls the move back, and the source serves on', async () => {
  const timeouts = { RPCMIG_STEP_TIMEOUT_MS: '2000', RPCMIG_START_TIMEOUT_MS: '3000', RPCMIG_QUIESCE_TIMEOUT_MS: '3000' };
  const src = await cluster.daemon({ ...timeouts, RPCMIG_FAILPOINTS: 'rewalk.after=hang' });
  const { server } = programCopy('unconfirmed-program');
  await cluster.server(server, src, ['--name', 'confirm-first']);
  breakdown(await cluster.migrate('confirm-first', src, b, ['--grace', '0.2']));
  const started = await cluster.server(server, src, ['--name', 'unconfirmed']);
  const client = await cluster.connect<Counter>('unconfirmed', src, { timeout: 20_000 });
  await client.incr(5);
  const moving = cluster.migrate('unconfirmed', src, b, ['--grace', '0.2']);
  assert.ok(await waitFor(() => started.stderr().includes('serving -> quiescing'), 10_000), 'the server was signalled while the walk hangs');
  const held = client.incr(1);
  const result = await moving;
  assert.is(result.code, 9, result.stderr);
  assert.match(result.stderr, /commit failed: the move made no progress for \d+ ms/);
  assert.is(await held, 6, 'the call held during the move ran at the source');
  assert.is((await client.where()).pid, started.pid, 'the source serves on');
  const standby = Number(/standby for unconfirmed pid (\d+)/.exec(b.stderr())?.[1]);
  assert.ok(standby > 0 && await waitFor(() => !isAlive(standby), 5000), `the destination ended what the move started (pid ${standby})`);
  // The hang was once: the next move walks the tree to the end and commits.
  breakdown(await cluster.migrate('unconfirmed', src, b, ['--grace', '0.2']));
  assert.is(await client.incr(1), 7);
  await cluster.end([src]);
});

test.run();
