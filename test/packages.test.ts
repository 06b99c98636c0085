// What of node_modules a program ships (DESIGN §3 step 2): the packages only devDependencies
// need stay behind, found as Node resolves packages; everything else travels.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { buildManifest } from '../daemon/transfer.js';
import { fromAbove, leftBehind, sourcePath } from '../daemon/packages.js';

const base = realpathSync(mkdtempSync(join(tmpdir(), 'rpcmig-packages-')));
test.after(() => rmSync(base, { recursive: true, force: true }));
let count = 0;

/** A package root: `packages` maps a directory below it to its package.json fields (a string: a link to that path). */
function makeRoot(root: object, packages: Record<string, object | string>): string {
  const dir = join(base, String(count++));
  mkdirSync(dir);
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'app', ...root }));
  writeFileSync(join(dir, 'server.js'), '');
  addPackages(dir, packages);
  return dir;
}

function addPackages(dir: string, packages: Record<string, object | string>): void {
  for (const [path, fields] of Object.entries(packages)) {
    mkdirSync(dirname(join(dir, path)), { recursive: true });
    if (typeof fields === 'string') symlinkSync(fields, join(dir, path));
    else {
      mkdirSync(join(dir, path), { recursive: true });
      writeFileSync(join(dir, path, 'package.json'), JSON.stringify(fields));
      writeFileSync(join(dir, path, 'index.js'), '');
    }
  }
}

/** A workspace with its own packages, and the package root `packages/app` in it. */
function makeWorkspace(app: object, packages: Record<string, object | string>): { workspace: string; root: string } {
  const workspace = join(base, String(count++));
  mkdirSync(workspace);
  writeFileSync(join(workspace, 'package.json'), JSON.stringify({ name: 'workspace', private: true, workspaces: ['packages/*'] }));
  addPackages(workspace, { 'packages/app': { name: 'app', ...app }, ...packages });
  return { workspace, root: join(workspace, 'packages', 'app') };
}

/** What fromAbove places, with each real directory relative to the workspace. */
function placedIn(workspace: string, root: string): Array<[string, string]> {
  return [...fromAbove(root, new Set(leftBehind(root)))].map(([path, real]): [string, string] => [path, real.slice(workspace.length + 1)]).sort();
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

test('a workspace\'s hoisted packages that the server needs come from above its root, each where Node finds the same one', () => {
  const { workspace, root } = makeWorkspace({ dependencies: { rpc: '1', lib: '1', shared: '2' }, devDependencies: { tool: '1' } }, {
    'node_modules/rpc': { dependencies: { helper: '1' } },
    'node_modules/helper': {},
    'node_modules/shared': { version: '1.0.0' },
    'node_modules/tool': { dependencies: { 'tool-lib': '1' } },
    'node_modules/tool-lib': {},
    'node_modules/other': {},
    'node_modules/lib': '../packages/lib',
    'packages/lib': { name: 'lib', dependencies: { shared: '1', own: '1', missing: '1' } },
    'packages/lib/node_modules/own': {},
    'packages/app/node_modules/shared': { version: '2.0.0' },
  });
  assert.equal(placedIn(workspace, root), [
    ['node_modules/helper', 'node_modules/helper'],
    ['node_modules/lib', 'packages/lib'],
    // The app's own shared is 2.0.0: lib's, hoisted, goes where lib finds it first.
    ['node_modules/lib/node_modules/shared', 'node_modules/shared'],
    ['node_modules/rpc', 'node_modules/rpc'],
  ]);
  // A package the app declares but nobody installed yet: the node_modules it would be installed in are watched, with a scope's directory.
  writeFileSync(join(root, 'package.json'), JSON.stringify({ name: 'app', dependencies: { '@scope/late': '1', '@new/late': '1' } }));
  addPackages(workspace, { 'node_modules/@scope/other': {} });
  const watched = new Set<string>();
  fromAbove(root, new Set(), (dir) => watched.add(dir));
  assert.ok([join(workspace, 'node_modules'), join(workspace, 'node_modules', '@scope')].every((dir) => watched.has(dir)), [...watched].join(' '));
  assert.not.ok(watched.has(join(workspace, 'packages', 'node_modules')), 'a node_modules that is not there is not watched');
  const opted = makeWorkspace({ dependencies: { rpc: '1' }, devDependencies: { tool: '1' }, rpcmig: { shipDevDependencies: true } }, {
    'node_modules/rpc': {},
    'node_modules/tool': { dependencies: { 'tool-lib': '1' } },
    'node_modules/tool-lib': {},
  });
  assert.equal(placedIn(opted.workspace, opted.root).map(([path]) => path), ['node_modules/rpc', 'node_modules/tool', 'node_modules/tool-lib'], 'shipDevDependencies brings the dev tools too');
});

test('a package linked from a store outside the root brings the packages it finds beside it in the store', () => {
  const { workspace, root } = makeWorkspace({ dependencies: { rpc: '1' } }, {
    'node_modules/.pnpm/rpc@1/node_modules/rpc': { dependencies: { helper: '1' } },
    'node_modules/.pnpm/rpc@1/node_modules/helper': '../../helper@1/node_modules/helper',
    'node_modules/.pnpm/helper@1/node_modules/helper': { dependencies: { rpc: '1' } },
    'node_modules/.pnpm/helper@1/node_modules/rpc': '../../rpc@1/node_modules/rpc',
    'packages/app/node_modules/rpc': '../../../node_modules/.pnpm/rpc@1/node_modules/rpc',
  });
  // rpc travels as the content of its link; helper, beside it in the store, is placed; helper's rpc is that rpc.
  assert.equal(placedIn(workspace, root), [['node_modules/helper', 'node_modules/.pnpm/helper@1/node_modules/helper']]);
});

test('the manifest carries what comes from above the root, read from where it is', async () => {
  const { workspace, root } = makeWorkspace({ dependencies: { rpc: '1', lib: '1' }, devDependencies: { tool: '1' } }, {
    'node_modules/rpc': {},
    'node_modules/tool': {},
    'node_modules/lib': '../packages/lib',
    'packages/lib': { name: 'lib' },
    'packages/lib/node_modules/own': {},
    // A dangling link where a placed package goes gives way to it.
    'packages/app/node_modules/rpc': '../gone',
  });
  let above = new Map<string, string>();
  const manifest = await buildManifest(root, { exclude: [], above: (placed) => (above = new Map(placed)) });
  assert.equal(manifest.entries.map((entry) => entry.path), [
    'index.js', 'node_modules/lib/index.js', 'node_modules/lib/node_modules/own/index.js', 'node_modules/lib/node_modules/own/package.json', 'node_modules/lib/package.json',
    'node_modules/rpc/index.js', 'node_modules/rpc/package.json', 'package.json',
  ]);
  assert.equal([...above.keys()].sort(), ['node_modules/lib', 'node_modules/rpc']);
  assert.is(sourcePath(root, above, 'node_modules/lib/node_modules/own/index.js'), join(workspace, 'packages', 'lib', 'node_modules', 'own', 'index.js'));
  assert.is(sourcePath(root, above, 'index.js'), join(root, 'index.js'));
});

test.run();
