// The thread that walks program trees (daemon/walker.ts) and the watches it keeps on them
// (daemon/watch.ts): a tree that did not change since its last walk is not listed again, and
// every kind of change — content, a touch, a new directory, a file reached through a link
// leaving the tree, a removal — makes the next walk list it, even one made just before.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
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
