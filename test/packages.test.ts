// What of node_modules a program ships (DESIGN §3 step 2): the packages only devDependencies
// need stay behind, found as Node resolves packages; everything else travels.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { buildManifest } from '../daemon/transfer.js';
import { leftBehind } from '../daemon/packages.js';

const base = realpathSync(mkdtempSync(join(tmpdir(), 'rpcmig-packages-')));
test.after(() => rmSync(base, { recursive: true, force: true }));
let count = 0;

/** A package root: `packages` maps a directory below it to its package.json fields (a string: a link to that path). */
function makeRoot(root: object, packages: Record<string, object | string>): string {
  const dir = join(base, String(count++));
  mkdirSync(dir);
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'app', ...root }));
  writeFileSync(join(dir, 'server.js'), '');
  for (const [path, fields] of Object.entries(packages)) {
    mkdirSync(dirname(join(dir, path)), { recursive: true });
    if (typeof fields === 'string') symlinkSync(fields, join(dir, path));
    else {
      mkdirSync(join(dir, path), { recursive: true });
      writeFileSync(join(dir, path, 'package.json'), JSON.stringify(fields));
      writeFileSync(join(dir, path, 'index.js'), '');
    }
  }
  return dir;
}

const leftOut = (root: string): string[] => leftBehind(root).map((dir) => dir.slice(root.length + 1)).filter((dir) => dir !== 'node_modules/.cache').sort();

test('packages reached only from devDependencies are left out, through their own dependencies, nested and scoped', () => {
  const root = makeRoot({ dependencies: { dep: '1' }, devDependencies: { tool: '1', '@types/node': '1', shared: '1' } }, {
    'node_modules/dep': { dependencies: { shared: '1', nested: '1' } },
    'node_modules/dep/node_modules/nested': {},
    'node_modules/shared': {},
    'node_modules/tool': { dependencies: { 'tool-lib': '1', nested: '1' } },
    'node_modules/tool/node_modules/nested': {},
    'node_modules/tool-lib': {},
    'node_modules/@types/node': {},
    'node_modules/undeclared': {},
  });
  assert.equal(leftOut(root), ['node_modules/@types/node', 'node_modules/tool', 'node_modules/tool-lib', 'node_modules/tool/node_modules/nested']);
});

test('peers are followed unless marked optional; optional dependencies are followed', () => {
  const root = makeRoot({ dependencies: { lib: '1' }, devDependencies: { typescript: '5', react: '18', extract: '1' } }, {
    'node_modules/lib': {
      peerDependencies: { typescript: '5', react: '18' },
      peerDependenciesMeta: { typescript: { optional: true } },
      optionalDependencies: { extract: '1' },
    },
    'node_modules/typescript': {},
    'node_modules/react': {},
    'node_modules/extract': {},
  });
  assert.equal(leftOut(root), ['node_modules/typescript']);
});

test('a package linked in from a store inside node_modules is left out by its real directory', () => {
  const root = makeRoot({ dependencies: { dep: '1' }, devDependencies: { tool: '1' } }, {
    'node_modules/.store/tool@1/node_modules/tool': { dependencies: { helper: '1' } },
    'node_modules/.store/tool@1/node_modules/helper': {},
    'node_modules/.store/dep@1/node_modules/dep': { dependencies: { helper2: '1' } },
    'node_modules/.store/dep@1/node_modules/helper2': {},
    'node_modules/tool': '.store/tool@1/node_modules/tool',
    'node_modules/dep': '.store/dep@1/node_modules/dep',
  });
  assert.equal(leftOut(root), ['node_modules/.store/tool@1/node_modules/helper', 'node_modules/.store/tool@1/node_modules/tool']);
});

test('nothing is left out without devDependencies, with shipDevDependencies, or with a package.json that is not JSON', () => {
  const packages = { 'node_modules/tool': {} };
  assert.equal(leftOut(makeRoot({}, packages)), []);
  assert.equal(leftOut(makeRoot({ devDependencies: { tool: '1' }, rpcmig: { shipDevDependencies: true } }, packages)), []);
  const broken = makeRoot({ devDependencies: { tool: '1' } }, packages);
  writeFileSync(join(broken, 'package.json'), '{ not json');
  assert.equal(leftOut(broken), []);
  assert.equal(leftOut(makeRoot({ devDependencies: { tool: '1', '../../etc': '1' } }, packages)), ['node_modules/tool'], 'a name that is a path is no package');
});

test('the manifest leaves out the dev-only packages, the links into them and the tools\' cache, and keeps the rest of node_modules', async () => {
  const root = makeRoot({ dependencies: { dep: '1' }, devDependencies: { tool: '1' } }, {
    'node_modules/dep': {},
    'node_modules/tool': {},
    'node_modules/.bin/dep': '../dep/index.js',
    'node_modules/.bin/tool': '../tool/index.js',
    'node_modules/.cache/tool': {},
  });
  const manifest = await buildManifest(root, { exclude: [] });
  assert.equal(manifest.entries.map((entry) => entry.path), [
    'node_modules/.bin/dep', 'node_modules/dep/index.js', 'node_modules/dep/package.json', 'package.json', 'server.js',
  ]);
  writeFileSync(join(root, 'package.json'), JSON.stringify({ dependencies: { dep: '1', tool: '1' } }));
  const paths = (await buildManifest(root, { exclude: [] })).entries.map((entry) => entry.path);
  assert.ok(paths.includes('node_modules/tool/index.js') && paths.includes('node_modules/.bin/tool'), 'a tool moved to dependencies travels');
  assert.not.ok(paths.some((path) => path.startsWith('node_modules/.cache/')));
  writeFileSync(join(root, 'package.json'), JSON.stringify({ devDependencies: { tool: '1' }, rpcmig: { shipDevDependencies: true } }));
  const whole = (await buildManifest(root, { exclude: [] })).entries.map((entry) => entry.path);
  assert.ok(['node_modules/.cache/tool/index.js', 'node_modules/.bin/tool', 'node_modules/tool/index.js'].every((path) => whole.includes(path)), whole.join(' '));
});

test.run();
