// The state file contract (issue 2): every supported type survives a save in one process and
// a restore in another; a file that does not fit the build, or is damaged, restores nothing.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const PROGRAM = join(__dirname, 'programs', 'state-roundtrip.js');
const dir = mkdtempSync(join(tmpdir(), 'rpcmig-state-'));
const saved = join(dir, 'saved.state');

/** Runs the program to the end (killed by pid after 60 s). */
function run(args: string[], env: Record<string, string> = {}) {
  const result = spawnSync(process.execPath, [PROGRAM, ...args], {
    env: { ...process.env, RPCMIG_RESTORE: undefined, STATE_BUILD: undefined, ...env },
    encoding: 'utf8',
    timeout: 60_000,
  });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

function restoreFrom(file: string, build = '') {
  return run(['restore'], { RPCMIG_RESTORE: file, STATE_BUILD: build });
}

/** A copy of the saved file, altered. */
function altered(name: string, change: (bytes: Buffer) => Buffer): string {
  const path = join(dir, name);
  writeFileSync(path, change(readFileSync(saved)));
  return path;
}

function assertRefused(result: ReturnType<typeof run>, message: string) {
  assert.is.not(result.code, 0);
  assert.ok(result.stderr.includes(message), `stderr lacks "${message}":\n${result.stderr}`);
  assert.not.ok(result.stdout.includes('verdict'), 'the program went on after a refused restore');
}

test.before(() => {
  const result = run(['save', saved]);
  assert.is(result.code, 0, result.stderr);
  assert.match(result.stdout.trim(), /^saved \d+ bytes$/);
});

test.after(() => rmSync(dir, { recursive: true, force: true }));

test('every supported type, shared reference and cycle is restored by another process', () => {
  const result = restoreFrom(saved);
  assert.is(result.stderr, '');
  assert.is(result.stdout.trim(), 'verdict: ok');
  assert.is(result.code, 0);
});

test('a restored process rehearses its snapshot, changing nothing, only if its state file was at most the size given', () => {
  const size = readFileSync(saved).length;
  const rehearse = (max: number, env: Record<string, string>) => run(['rehearse', String(max)], env).stdout.trim();
  assert.is(rehearse(size, { RPCMIG_RESTORE: saved }), 'rehearsed: true; the state is unchanged');
  assert.is(rehearse(size - 1, { RPCMIG_RESTORE: saved }), 'rehearsed: false; the state is unchanged');
  assert.is(rehearse(size, {}), 'rehearsed: false; the state is unchanged', 'a process that did not restore');
});

test('a variable the new build adds starts from its initialiser, and the log says so', () => {
  const result = restoreFrom(saved, 'new');
  assert.is(result.stdout.trim(), 'verdict: ok');
  assert.is(result.stderr, 'rpcmig: roundtrip.ts#added is new in this build; it starts from its initialiser\n');
});

test('a changed fingerprint is refused, naming the variable', () => {
  assertRefused(restoreFrom(saved, 'changed'), 'changed: roundtrip.ts#strings');
});

test('a variable missing from the new build is refused, naming it', () => {
  assertRefused(restoreFrom(saved, 'missing'), 'missing from this build: roundtrip.ts#dates');
});

test('a truncated file is refused', () => {
  const path = altered('truncated.state', (bytes) => bytes.subarray(0, bytes.length - 100));
  assertRefused(restoreFrom(path), 'truncated or padded');
  assertRefused(restoreFrom(altered('stub.state', (bytes) => bytes.subarray(0, 20))), 'truncated');
});

test('a flipped byte in the body or the header fails the checksum', () => {
  const flip = (at: (bytes: Buffer) => number) => (bytes: Buffer) => {
    const copy = Buffer.from(bytes);
    copy[at(copy)] ^= 0x01;
    return copy;
  };
  assertRefused(restoreFrom(altered('body.state', flip((b) => b.length - 10))), 'checksum mismatch');
  assertRefused(restoreFrom(altered('key.state', flip(() => 20))), 'checksum mismatch');
});

test('another format version is refused: the previous one and a future one', () => {
  const version = (v: number) => (bytes: Buffer) => Buffer.concat([bytes.subarray(0, 8), Buffer.from([0, v]), bytes.subarray(10)]);
  assertRefused(restoreFrom(altered('old.state', version(2))), 'format version 2; this build reads version 3');
  assertRefused(restoreFrom(altered('future.state', version(4))), 'format version 4; this build reads version 3');
});

test('a file that is not a state file is refused', () => {
  assertRefused(restoreFrom(altered('magic.state', (bytes) => Buffer.concat([Buffer.from('NOTSTATE'), bytes.subarray(8)]))), 'bad magic');
});

test.run();
