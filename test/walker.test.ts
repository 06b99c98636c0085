// The thread that walks program trees (daemon/walker.ts) and the watches it keeps on them
// (daemon/watch.ts): a tree that did not change since its last walk is not listed again, and
// every kind of change — content, a touch, a new directory, a file reached through a link
// leaving the tree, a removal — makes the next walk list it, even one made just before.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Walker } from '../daemon/walker.js';

const base = realpathSync(mkdtempSync(join(tmpdir(), 'rpcmig-walker-')));
const walker = new Walker();

test.after(() => {
  walker.close();
  rmSync(base, { recursive: true, force: true });
});

/** A program tree with a package below node_modules, and a file reached through a link that leaves it. */
function makeTree(name: string): { root: string; outside: string } {
  const root = join(base, name, 'app');
  const outside = join(base, name, 'shared');
  mkdirSync(join(root, 'node_modules', 'dep'), { recursive: true });
  mkdirSync(outside, { recursive: true });
  writeFileSync(join(root, 'package.json'), '{"name":"app"}');
  writeFileSync(join(root, 'server.js'), "require('dep');");
  writeFileSync(join(root, 'node_modules', 'dep', 'index.js'), 'module.exports = 1;');
  writeFileSync(join(outside, 'config.js'), 'module.exports = { port: 1 };');
  symlinkSync(join(outside, 'config.js'), join(root, 'config.js'));
  return { root, outside };
}

/** One walk: the tree's id, and whether the tree was listed for it. */
async function walk(root: string): Promise<{ id: string; listed: boolean; paths: string[] }> {
  let listed = false;
  const { id, manifest } = await walker.walk(root, [], () => (listed = true));
  return { id, listed, paths: manifest.entries.map((entry) => entry.path) };
}

test('an unchanged tree is listed once; each change, made just before the next walk, makes that walk list it', async () => {
  const { root, outside } = makeTree('changes');
  const first = await walk(root);
  assert.ok(first.listed);
  const again = await walk(root);
  assert.equal(again, { ...first, listed: false }, 'unchanged: the same id and manifest, not listed');

  const changes: Array<[string, () => void, 'new id' | 'same id']> = [
    ['content changed in place', () => writeFileSync(join(root, 'node_modules', 'dep', 'index.js'), 'module.exports = 2;'), 'new id'],
    ['touched, same content', () => utimesSync(join(root, 'server.js'), new Date(), new Date(Date.now() - 60_000)), 'same id'],
    ['a new directory with a file', () => {
      mkdirSync(join(root, 'node_modules', 'dep', 'lib'));
      writeFileSync(join(root, 'node_modules', 'dep', 'lib', 'extra.js'), '// extra');
    }, 'new id'],
    ['a file changed through a link that leaves the tree', () => writeFileSync(join(outside, 'config.js'), 'module.exports = { port: 2 };'), 'new id'],
    ['a file removed', () => rmSync(join(root, 'node_modules', 'dep', 'lib', 'extra.js')), 'new id'],
  ];
  let last = again;
  for (const [change, make, expect] of changes) {
    make();
    const next = await walk(root);
    assert.ok(next.listed, `${change}: listed again`);
    if (expect === 'new id') assert.is.not(next.id, last.id, `${change}: a new id`);
    else assert.is(next.id, last.id, `${change}: the same id`);
    const quiet = await walk(root);
    assert.equal(quiet, { ...next, listed: false }, `${change}: then unchanged, not listed`);
    last = next;
  }
  assert.ok(last.paths.includes('config.js') && !last.paths.includes('node_modules/dep/lib/extra.js'));
});

test('a tree removed and made again at the same root is listed, not taken for the one watched', async () => {
  const { root } = makeTree('remade');
  const first = await walk(root);
  rmSync(root, { recursive: true, force: true });
  mkdirSync(root, { recursive: true });
  writeFileSync(join(root, 'package.json'), '{"name":"other"}');
  writeFileSync(join(root, 'server.js'), '// another program');
  const next = await walk(root);
  assert.ok(next.listed);
  assert.is.not(next.id, first.id);
  assert.equal(next.paths, ['package.json', 'server.js']);
});

test('walks of several trees keep apart: a change in one lists only that one', async () => {
  const trees = ['one', 'two', 'three'].map((name) => makeTree(`apart-${name}`).root);
  for (const root of trees) assert.ok((await walk(root)).listed);
  writeFileSync(join(trees[1], 'server.js'), '// changed');
  const listed = [];
  for (const root of trees) listed.push((await walk(root)).listed);
  assert.equal(listed, [false, true, false]);
});

test('what only devDependencies need is watched, though not listed: a change that makes it needed lists the tree again', async () => {
  const { root } = makeTree('dev-only');
  mkdirSync(join(root, 'node_modules', 'tool'));
  mkdirSync(join(root, 'node_modules', 'helper'));
  writeFileSync(join(root, 'package.json'), JSON.stringify({ dependencies: { dep: '1' }, devDependencies: { tool: '1' } }));
  writeFileSync(join(root, 'node_modules', 'tool', 'package.json'), '{}');
  writeFileSync(join(root, 'node_modules', 'helper', 'index.js'), '');
  const first = await walk(root);
  assert.ok(first.listed && !first.paths.some((path) => path.startsWith('node_modules/tool')), first.paths.join(' '));
  assert.ok(first.paths.includes('node_modules/helper/index.js'), 'a package nothing declares travels');
  assert.is((await walk(root)).listed, false);
  // The tool now needs the helper: still only the tool needs it, and it stays behind with it.
  writeFileSync(join(root, 'node_modules', 'tool', 'package.json'), '{"dependencies":{"helper":"1"}}');
  const next = await walk(root);
  assert.ok(next.listed, 'a left-out package\'s package.json is watched');
  assert.ok(!next.paths.includes('node_modules/helper/index.js'), next.paths.join(' '));
  writeFileSync(join(root, 'package.json'), JSON.stringify({ dependencies: { dep: '1', tool: '1' } }));
  const needed = await walk(root);
  assert.ok(needed.listed && needed.paths.includes('node_modules/tool/package.json') && needed.paths.includes('node_modules/helper/index.js'));
});

test('the files walked are found by their hashes; a file changed and walked again is found by its new hash only', async () => {
  const { root } = makeTree('files-of');
  const sha = (text: string) => createHash('sha256').update(text).digest('hex');
  const [before, after] = [sha('module.exports = 1;'), sha('module.exports = 3;')];
  assert.equal(await new Walker().filesOf([before]), new Map(), 'a thread that walked nothing knows no file');
  await walk(root);
  const dep = join(root, 'node_modules', 'dep', 'index.js');
  assert.equal(await walker.filesOf([before, after]), new Map([[before, dep]]));
  writeFileSync(dep, 'module.exports = 3;');
  await walk(root);
  assert.equal(await walker.filesOf([before, after]), new Map([[after, dep]]));
});

test('two walks of one tree at once both list it; the tree is then watched, once', async () => {
  const { root } = makeTree('overlap');
  const [one, two] = await Promise.all([walk(root), walk(root)]);
  assert.ok(one.listed && two.listed);
  assert.is(one.id, two.id);
  assert.is((await walk(root)).listed, false);
  writeFileSync(join(root, 'server.js'), '// changed');
  assert.is((await walk(root)).listed, true);
});

test.run();
