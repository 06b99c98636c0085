// The package as users get it: packed to a tarball, installed into a new project with
// typescript and ts-patch, built with `tspc` through the tsconfig plugin, then run: state
// saved by one process is restored by the next, for ESM and CommonJS output.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const root = resolve(__dirname, '..', '..');
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const dev = pkg.devDependencies as Record<string, string>;

const SOURCE = `import { captureState } from 'rpcmig';
import { writeFileSync } from 'node:fs';

/** @migrate */
const words = new Map<string, number>();
// @migrate
let hits = 0n;

if (process.argv[2] === 'save') {
  words.set('apple', 1).set('pear', 2);
  hits = 2n ** 70n;
  writeFileSync(process.argv[3], captureState());
} else {
  console.log(JSON.stringify({ words: [...words], hits: String(hits) }));
}
`;

function tsconfig(module: string): string {
  const compilerOptions = {
    target: 'ES2022', module, moduleResolution: module, strict: true, outDir: 'dist', rootDir: 'src',
    types: ['node'], plugins: [{ transform: 'rpcmig/transformer' }],
  };
  return JSON.stringify({ compilerOptions, include: ['src'] }, null, 2);
}

function writeProject(dir: string, type: string): void {
  mkdirSync(join(dir, 'src'), { recursive: true });
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: `app-${type}`, private: true, type }));
  writeFileSync(join(dir, 'tsconfig.json'), tsconfig('node16'));
  writeFileSync(join(dir, 'src', 'state.ts'), SOURCE);
}

function npm(args: string[], cwd: string): string {
  return execFileSync('npm', args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

let work = '';

test.before(() => {
  work = mkdtempSync(join(tmpdir(), 'rpcmig-pack-'));
});

test.after(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

test('the packed tarball installs into a new project and builds with tspc', () => {
  const tarball = npm(['pack', '--ignore-scripts', '--silent', '--pack-destination', work], root).trim().split('\n').pop()!;
  writeProject(work, 'module');
  writeProject(join(work, 'cjs'), 'commonjs');
  const deps = [`typescript@${dev.typescript}`, `ts-patch@${dev['ts-patch']}`, `@types/node@${dev['@types/node']}`];
  npm(['install', '--no-audit', '--no-fund', '--prefer-offline', join(work, tarball), ...deps], work);
  for (const dir of [work, join(work, 'cjs')]) {
    const built = spawnSync(process.execPath, [join(work, 'node_modules/ts-patch/bin/tspc.js'), '-p', dir], { cwd: dir, encoding: 'utf8' });
    assert.is(built.status, 0, built.stdout + built.stderr);
    assert.match(readFileSync(join(dir, 'dist', 'state.js'), 'utf8'), 'rpcmig/state');
  }
});

for (const [label, sub] of [['ESM', ''], ['CommonJS', 'cjs']] as const) {
  test(`${label} output: state captured by one process is restored by the next`, () => {
    const dir = join(work, sub);
    const file = join(dir, 'state.bin');
    const program = join(dir, 'dist', 'state.js');
    execFileSync(process.execPath, [program, 'save', file], { cwd: dir });
    const fresh = execFileSync(process.execPath, [program], { cwd: dir, encoding: 'utf8' });
    assert.equal(JSON.parse(fresh), { words: [], hits: '0' });
    const env = { ...process.env, RPCMIG_RESTORE: file };
    const restored = execFileSync(process.execPath, [program], { cwd: dir, env, encoding: 'utf8' });
    assert.equal(JSON.parse(restored), { words: [['apple', 1], ['pear', 2]], hits: String(2n ** 70n) });
  });
}

test.run();
