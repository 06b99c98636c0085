#!/usr/bin/env node
// Builds the package (plain tsc), then the example servers under fixtures/ with the
// package's own transformer (tspc). fixtures/ is a self-contained program root, as a user's
// would be: its node_modules holds a copy of this package's runtime and transformer and of
// msgpackr, so that a migration ships a program that runs anywhere.
'use strict';
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const bin = (pkg, file) => path.join(root, 'node_modules', pkg, 'bin', file);
const run = (file, args) => execFileSync(process.execPath, [file, ...args], { cwd: root, stdio: 'inherit' });

run(bin('typescript', 'tsc'), ['-p', 'tsconfig.json']);

/**
 * Removes what an earlier build emitted for a source since deleted or renamed: it would still
 * be shipped (dist/runtime is copied into programs) and run (uvu runs every dist/test/*.test.js).
 */
function pruneStale(dir) {
  for (const entry of fs.readdirSync(path.join(root, 'dist', dir), { withFileTypes: true })) {
    const relative = path.join(dir, entry.name);
    if (entry.isDirectory()) {
      pruneStale(relative);
      continue;
    }
    const emitted = /^(.*?)(\.d\.ts|\.js)$/.exec(entry.name);
    if (emitted && !fs.existsSync(path.join(root, dir, `${emitted[1]}.ts`))) fs.rmSync(path.join(root, 'dist', relative));
  }
}
for (const dir of ['transformer', 'runtime', 'daemon', 'test', 'bench', 'demo']) {
  if (fs.existsSync(path.join(root, 'dist', dir))) pruneStale(dir);
}

/** Replaces `dest` (a directory, or a link left by older builds) with a copy of `parts` of `from`. */
function install(from, dest, parts) {
  if (fs.lstatSync(dest, { throwIfNoEntry: false })?.isSymbolicLink()) fs.unlinkSync(dest);
  fs.rmSync(dest, { recursive: true, force: true });
  for (const part of parts) {
    fs.cpSync(path.join(from, part), path.join(dest, part), { recursive: true, filter: (src) => !src.endsWith('.tsbuildinfo') });
  }
}

const modules = path.join(root, 'fixtures', 'node_modules');
fs.mkdirSync(modules, { recursive: true });
install(root, path.join(modules, 'rpcmig'), ['package.json', 'dist/runtime', 'dist/transformer']);
const msgpackr = path.join(root, 'node_modules', 'msgpackr');
install(msgpackr, path.join(modules, 'msgpackr'), fs.readdirSync(msgpackr));

run(bin('ts-patch', 'tspc.js'), ['-p', 'fixtures/tsconfig.json']);
