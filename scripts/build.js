#!/usr/bin/env node
// Builds the package (plain tsc), then the example servers under fixtures/ with the
// package's own transformer (tspc), linking fixtures/node_modules/rpcmig to this package.
'use strict';
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const bin = (pkg, file) => path.join(root, 'node_modules', pkg, 'bin', file);
const run = (file, args) => execFileSync(process.execPath, [file, ...args], { cwd: root, stdio: 'inherit' });

run(bin('typescript', 'tsc'), ['-p', 'tsconfig.json']);

const link = path.join(root, 'fixtures', 'node_modules', 'rpcmig');
fs.mkdirSync(path.dirname(link), { recursive: true });
if (!fs.existsSync(link)) fs.symlinkSync(path.relative(path.dirname(link), root), link, 'dir');

if (fs.existsSync(path.join(root, 'fixtures', 'tsconfig.json'))) {
  run(bin('ts-patch', 'tspc.js'), ['-p', 'fixtures/tsconfig.json']);
}
