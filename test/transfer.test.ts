// Program shipping on real file trees: manifests, the blob store, materialisation, and every
// refusal of a malicious manifest or blob (DESIGN §3 steps 2 and 5, §6).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, realpathSync, rmSync, statSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { RpcmigError } from '../runtime/errors.js';
import { waitFor } from './helpers/process.js';
import { BlobReceiver, BlobStore, buildManifest, chunkFile, sendBlobs, findPackageRoot, hashStats, manifestId, materialize, type Manifest, type Piece } from '../daemon/transfer.js';

const base = mkdtempSync(join(tmpdir(), 'rpcmig-transfer-'));
test.after(() => rmSync(base, { recursive: true, force: true }));
let dirCount = 0;
const freshDir = (): string => realpathSync(mkdtempSync(join(base, `${dirCount++}-`)));
const sha = (text: string): string => createHash('sha256').update(text).digest('hex');

type Spec = Record<string, string | { exec: string } | { link: string }>;
/** Writes the tree with modification times in the past, so that hashes may be cached at once. */
function writeTree(root: string, spec: Spec): void {
  const old = new Date(Date.now() - 60_000);
  for (const [path, what] of Object.entries(spec)) {
    const abs = join(root, path);
    mkdirSync(dirname(abs), { recursive: true });
    if (typeof what === 'object' && 'link' in what) symlinkSync(what.link, abs);
    else {
      writeFileSync(abs, typeof what === 'string' ? what : what.exec, { mode: typeof what === 'string' ? 0o644 : 0o755 });
      utimesSync(abs, old, old);
    }
  }
}

/** Every path under `dir`, to show that a refusal created nothing anywhere. */
function listAll(dir: string): string[] {
  return readdirSync(dir, { recursive: true }).map(String).sort();
}

/** The files under `dir` (the blob store: blobs, temporary files, the marker), directories left out. */
function filesIn(dir: string): string[] {
  return listAll(dir).filter((path) => !statSync(join(dir, path)).isDirectory());
}

const SERVER = "const util = require('./lib/util.js'); const dep = require('dep'); console.log(util.name, dep.name);";
const PROGRAM: Spec = {
  'package.json': '{"name":"app"}',
  'dist/server.js': SERVER,
  'dist/lib/util.js': "exports.name = 'util';",
  'node_modules/dep/package.json': '{"name":"dep"}',
  'node_modules/dep/index.js': "exports.name = 'dep';",
  'node_modules/dep/cli.js': { exec: '#!/usr/bin/env node\n' },
  'node_modules/.bin/dep': { link: '../dep/cli.js' },
  'node_modules/.git/config': 'skipped',
  '.git/HEAD': 'skipped',
  'spool/blobs/junk': 'excluded',
};

/** The program above, plus an `npm link`ed package outside it and an absolute link inside it. */
function makeProgram(): { root: string; outside: string } {
  const top = freshDir();
  const root = join(top, 'app');
  const outside = join(top, 'linked');
  writeTree(outside, { 'index.js': "exports.name = 'linked';" });
  writeTree(root, { ...PROGRAM, 'node_modules/linked': { link: outside }, 'abs-link': { link: join(root, 'dist/server.js') } });
  return { root, outside };
}

const file = (path: string, content: string, mode: 0o644 | 0o755 = 0o644) => ({ path, size: Buffer.byteLength(content), mode, hash: sha(content) });

/** The error a promise rejects with (uvu's assert has no `rejects`). */
async function failure(promise: Promise<unknown>): Promise<Error> {
  const error = await promise.then(() => undefined, (e: unknown) => e);
  assert.instance(error, Error, 'expected a rejection');
  return error as Error;
}

test('the manifest lists files and links of the package root, without .git or the spool, in order', async () => {
  const { root } = makeProgram();
  assert.is(await findPackageRoot(join(root, 'dist/lib/util.js')), root);
  const manifest = await buildManifest(root, { exclude: [join(root, 'spool')] });
  assert.equal(manifest.entries, [
    { path: 'abs-link', link: 'dist/server.js' },
    file('dist/lib/util.js', "exports.name = 'util';"),
    file('dist/server.js', SERVER),
    { path: 'node_modules/.bin/dep', link: '../dep/cli.js' },
    file('node_modules/dep/cli.js', '#!/usr/bin/env node\n', 0o755),
    file('node_modules/dep/index.js', "exports.name = 'dep';"),
    file('node_modules/dep/package.json', '{"name":"dep"}'),
    file('node_modules/linked/index.js', "exports.name = 'linked';"),
    file('package.json', '{"name":"app"}'),
  ]);
});

test('a link to a directory containing the package root is refused, naming it', async () => {
  const { root } = makeProgram();
  writeTree(root, { 'node_modules/self': { link: '../..' } });
  const error = await failure(buildManifest(root, { exclude: [] }));
  assert.instance(error, RpcmigError);
  assert.is(
    error.message,
    `program refused: "node_modules/self": symlink to ${dirname(root)} contains the package root or loops: exclude it or replace it with a copy`,
  );
});

test('an unchanged tree gives the same id from cached hashes; a changed file is hashed again', async () => {
  const { root } = makeProgram();
  const first = await buildManifest(root, { exclude: [join(root, 'spool')] });
  const before = { ...hashStats };
  const second = await buildManifest(root, { exclude: [join(root, 'spool')] });
  assert.is(manifestId(second), manifestId(first));
  assert.equal([hashStats.hashed - before.hashed, hashStats.cached - before.cached], [0, 7]);
  writeTree(root, { 'dist/lib/util.js': "exports.name = 'UTIL';" });
  const third = await buildManifest(root, { exclude: [join(root, 'spool')] });
  assert.is.not(manifestId(third), manifestId(first));
  assert.is(hashStats.hashed - before.hashed, 1);
});

/** Ships every missing blob the way the coordinator will, with the receiver called directly. */
async function ship(root: string, manifest: Manifest, store: BlobStore): Promise<number> {
  const receiver = new BlobReceiver(store, manifest);
  return sendBlobs(root, manifest, await store.missing(manifest), (pieces) => receiver.receive(pieces), { chunkSize: 4096 });
}

test('shipped once, nothing is missing; the materialised program runs, hard-linked to the store', async () => {
  const { root } = makeProgram();
  const manifest = await buildManifest(root, { exclude: [join(root, 'spool')] });
  const spool = freshDir();
  const store = await BlobStore.open(spool);
  assert.is((await store.missing(manifest)).length, 7);
  assert.ok((await ship(root, manifest, store)) > 0);
  assert.equal(await store.missing(manifest), []);
  mkdirSync(join(spool, 'programs'));
  const dest = join(spool, 'programs', manifestId(manifest));
  await materialize(manifest, store, dest);
  const run = spawnSync(process.execPath, [join(dest, 'dist/server.js')], { encoding: 'utf8' });
  assert.is(run.stdout, 'util dep\n');
  const util = file('dist/lib/util.js', '');
  assert.is(statSync(join(dest, util.path)).ino, statSync(store.path(sha("exports.name = 'util';"))).ino);
  assert.is(statSync(join(dest, util.path)).mode & 0o777, 0o444);
  const cli = statSync(join(dest, 'node_modules/dep/cli.js'));
  assert.is(cli.mode & 0o777, 0o755);
  assert.is.not(cli.ino, statSync(store.path(sha('#!/usr/bin/env node\n'))).ino);
  assert.is(readlinkSync(join(dest, 'node_modules/.bin/dep')), '../dep/cli.js');
  assert.is(readFileSync(join(dest, 'abs-link'), 'utf8'), SERVER);
  assert.is(readFileSync(join(dest, 'node_modules/linked/index.js'), 'utf8'), "exports.name = 'linked';");
  assert.is(await ship(root, manifest, store), 0);
});

test('a program\'s directories are blank ones renamed into place; they are made again, and a reopened store keeps only the empty ones', async () => {
  const { root } = makeProgram();
  const manifest = await buildManifest(root, { exclude: [join(root, 'spool')] });
  const spool = freshDir();
  const store = await BlobStore.open(spool, { blanks: 40 });
  const blankDirs = join(spool, 'blobs', 'blank-dirs');
  assert.ok(await waitFor(() => store.blankDirs.count === 10, 10_000), `${store.blankDirs.count} blank directories made`);
  const inodes = new Set(readdirSync(blankDirs).map((name) => statSync(join(blankDirs, name)).ino));
  await ship(root, manifest, store);
  mkdirSync(join(spool, 'programs'));
  const dest = join(spool, 'programs', manifestId(manifest));
  await materialize(manifest, store, dest);
  const dirs = listAll(dest).filter((path) => lstatSync(join(dest, path)).isDirectory());
  assert.ok(dirs.length >= 5, dirs.join(' '));
  assert.ok(dirs.every((dir) => inodes.has(statSync(join(dest, dir)).ino)), 'every directory was a blank one');
  assert.is(spawnSync(process.execPath, [join(dest, 'dist/server.js')], { encoding: 'utf8' }).stdout, 'util dep\n');
  assert.ok(await waitFor(() => store.blankDirs.count === 10, 10_000), `made again: ${store.blankDirs.count}`);
  store.close();
  // One someone wrote into, and a stranger, are removed; the empty ones are kept.
  const kept = readdirSync(blankDirs).sort();
  writeFileSync(join(blankDirs, kept[0], 'x'), '');
  mkdirSync(join(blankDirs, 'stranger'));
  const again = await BlobStore.open(spool, { blanks: 40 });
  assert.ok(await waitFor(() => again.blankDirs.count === 10, 10_000));
  const now = readdirSync(blankDirs);
  assert.ok(kept.slice(1).every((name) => now.includes(name)), 'the empty ones are kept');
  assert.not.ok(now.includes(kept[0]));
  assert.not.ok(now.includes('stranger'));
  again.close();
});

test('materialisation never writes through an existing name and needs every blob', async () => {
  const spool = freshDir();
  const store = await BlobStore.open(spool);
  const outside = freshDir();
  const manifest: Manifest = { entries: [file('a.js', 'a')] };
  await store.put(sha('a'), Buffer.from('a'));
  symlinkSync(outside, join(spool, 'dest'));
  const error = await failure(materialize(manifest, store, join(spool, 'dest')));
  assert.is((error as NodeJS.ErrnoException).code, 'EEXIST');
  assert.equal(listAll(outside), []);
  assert.match((await failure(materialize({ entries: [file('b.js', 'b')] }, store, join(spool, 'b')))).message, /1 blobs missing from the store/);
  assert.not.ok(lstatSync(join(spool, 'b'), { throwIfNoEntry: false }));
});

test('a blob changed in place through a hard link no longer counts as stored', async () => {
  const store = await BlobStore.open(freshDir());
  await store.put(sha('x'), Buffer.from('x'));
  assert.ok(await store.has(sha('x')));
  // Root writes through mode 0444; the chmod stands in for that when the tests run unprivileged.
  chmodSync(store.path(sha('x')), 0o644);
  writeFileSync(store.path(sha('x')), 'y');
  assert.not.ok(await store.has(sha('x')));
});

test('blobs arrive into blank files, sealed read-only; the blanks are made again, and a reopened store keeps the good ones', async () => {
  const spool = freshDir();
  const store = await BlobStore.open(spool, { blanks: 6 });
  const blankDir = join(spool, 'blobs', 'blank');
  assert.ok(await waitFor(() => store.blanks.count === 6, 10_000), `${store.blanks.count} blanks made`);
  const inodes = new Set(readdirSync(blankDir).map((name) => statSync(join(blankDir, name)).ino));
  assert.is(inodes.size, 6);
  const whole = ['one', 'two', 'three', 'four'];
  const big = 'x'.repeat(10_000);
  const manifest: Manifest = { entries: [...whole.map((text) => file(`${text}.js`, text)), file('zbig.js', big)].sort((a, b) => (a.path < b.path ? -1 : 1)) };
  const receiver = new BlobReceiver(store, manifest);
  // Four blobs in one piece each, one in three pieces: both ways of writing take blanks.
  await receiver.receive(whole.map((text): Piece => [sha(text), 0, Buffer.from(text), true]));
  for (const [offset, end] of [[0, 4000], [4000, 8000], [8000, 10_000]]) {
    await receiver.receive([[sha(big), offset, Buffer.from(big.slice(offset, end)), end === 10_000]]);
  }
  for (const text of [...whole, big]) {
    const st = statSync(store.path(sha(text)));
    assert.is(readFileSync(store.path(sha(text)), 'utf8'), text);
    assert.is(st.mode & 0o777, 0o444, 'sealed read-only');
    assert.is(st.mtimeMs, 0, 'sealed mtime');
    assert.ok(await store.has(sha(text), text.length));
    assert.ok(inodes.has(st.ino), 'written into a blank');
  }
  assert.is(readdirSync(join(spool, 'blobs', 'tmp'), { recursive: true, withFileTypes: true }).filter((e) => !e.isDirectory()).length, 0, 'no file was created for them');
  assert.ok(await waitFor(() => store.blanks.count === 6, 10_000), `made again: ${store.blanks.count}`);
  store.close();
  // A blank someone wrote into, and a stranger, are removed; the empty ones are kept.
  const kept = readdirSync(blankDir).sort();
  writeFileSync(join(blankDir, kept[0]), 'not empty');
  writeFileSync(join(blankDir, 'stranger'), '');
  const again = await BlobStore.open(spool, { blanks: 6 });
  assert.ok(await waitFor(() => again.blanks.count === 6, 10_000));
  const now = readdirSync(blankDir).sort();
  assert.ok(kept.slice(1).every((name) => now.includes(name)), 'the empty blanks are kept');
  assert.not.ok(now.includes(kept[0]));
  assert.not.ok(now.includes('stranger'));
  assert.ok(now.every((name) => statSync(join(blankDir, name)).size === 0));
  again.close();
});

const REFUSALS: [string, unknown, string, object?][] = [
  ['not a manifest', { entries: 'x' }, 'not a manifest: expected { entries: [...] }'],
  ['extra fields', { entries: [], run: 'x' }, 'not a manifest: expected { entries: [...] }'],
  ['absolute path', [file('/etc/passwd', 'x')], '"/etc/passwd": absolute path'],
  ['..', [file('a/../../x', 'x')], '"a/../../x": ".." path segment'],
  ['.', [file('./x', 'x')], '"./x": "." path segment'],
  ['empty segment', [file('a//b', 'x')], '"a//b": empty path segment'],
  ['backslash', [file('a\\b', 'x')], '"a\\\\b": contains U+005C'],
  ['NUL', [file('a\0b', 'x')], '"a\\u0000b": contains U+0000'],
  ['newline', [file('a\nb', 'x')], '"a\\nb": contains U+000A'],
  ['not NFC', [file('e\u0301.js', 'x')], '"e\u0301.js": not NFC-normalised'],
  ['NFKC collision', [file('file.js', 'x'), file('\ufb01le.js', 'x')], '"ﬁle.js": collides with "file.js" after Unicode and case folding'],
  ['case collision', [file('README.md', 'x'), file('readme.md', 'x')], '"readme.md": collides with "README.md" after Unicode and case folding'],
  ['directory collision', [file('Lib/a.js', 'x'), file('lib/b.js', 'x')], '"lib": collides with "Lib" after Unicode and case folding'],
  ['duplicate', [file('a.js', 'x'), file('a.js', 'y')], '"a.js": duplicate entry'],
  ['unsorted', [file('b.js', 'x'), file('a.js', 'x')], '"a.js": entries are not sorted by path'],
  ['file as a directory', [file('a', 'x'), file('a/b', 'x')], '"a/b": lies inside "a", which is not a directory'],
  ['link as a directory', [{ path: 'l', link: 'd' }, file('l/b', 'x')], '"l/b": lies inside "l", which is not a directory'],
  ['link up and out', [{ path: 'a/l', link: '../../x' }], '"a/l": symlink target "../../x" leaves the root'],
  ['absolute link', [{ path: 'l', link: '/etc' }], '"l": symlink target "/etc" is absolute'],
  ['out through a link', [{ path: 'a/up', link: '..' }, { path: 'b', link: 'a/up/..' }], '"b": symlink target "a/up/.." leaves the root'],
  ['out through a link to the root', [{ path: 'l', link: '.' }, { path: 'm', link: 'l/..' }], '"m": symlink target "l/.." leaves the root'],
  ['link loop', [{ path: 'x', link: 'y' }, { path: 'y', link: 'x' }], '"x": too many levels of symlinks'],
  ['hard link', [{ path: 'h', type: 'hardlink', link: 'a' }], '"h": entry of unknown kind (link,path,type): only files and symlinks are shipped'],
  ['device', [{ path: 'dev', type: 'chardev', major: 1, minor: 3 }], '"dev": entry of unknown kind (major,minor,path,type): only files and symlinks are shipped'],
  ['bad hash', [{ ...file('a', 'x'), hash: 'ABC' }], '"a": hash is not 64 lowercase hex digits'],
  ['bad mode', [{ ...file('a', 'x'), mode: 0o4755 }], '"a": mode is neither 0o644 nor 0o755'],
  ['unsafe size', [{ ...file('a', 'x'), size: 2 ** 53 }], '"a": size is not a safe integer'],
  ['negative size', [{ ...file('a', 'x'), size: -1 }], '"a": size is not a safe integer'],
  ['big file', [{ ...file('a', 'x'), size: 11 }], '"a": file exceeds 10 bytes', { maxFileBytes: 10 }],
  ['big total', [{ ...file('a', 'x'), size: 8 }, { ...file('b', 'x'), size: 8 }], '"b": program exceeds 15 bytes in total', { maxTotalBytes: 15 }],
  ['too many', [file('a', 'x'), file('b', 'x')], 'program has more than 1 entries', { maxEntries: 1 }],
];

for (const [name, entries, reason, limits] of REFUSALS) {
  test(`a manifest with ${name} is refused before anything is staged`, async () => {
    const spool = freshDir();
    const store = await BlobStore.open(spool);
    await store.put(sha('x'), Buffer.from('x'));
    const before = listAll(spool);
    const manifest = (Array.isArray(entries) ? { entries } : entries) as Manifest;
    const error = await failure(materialize(manifest, store, join(spool, 'dest'), limits));
    assert.is((error as RpcmigError).code, 'TRANSFER_REFUSED');
    assert.is(error.message, `program refused: ${reason}`);
    assert.equal(listAll(spool), before);
  });
}

async function receiverFor(content: string): Promise<{ store: BlobStore; receiver: BlobReceiver; hash: string; spool: string }> {
  const spool = freshDir();
  const store = await BlobStore.open(spool);
  const receiver = new BlobReceiver(store, { entries: [file('f', content)] });
  return { store, receiver, hash: sha(content), spool };
}

test('a blob whose bytes do not match its hash is refused and leaves nothing behind', async () => {
  const { store, receiver, hash, spool } = await receiverFor('right');
  assert.match((await failure(receiver.receive([[hash, 0, Buffer.from('wrong'), true]]))).message, /content hashes to /);
  assert.not.ok(await store.has(hash));
  assert.equal(filesIn(join(spool, 'blobs')), []);
  assert.match((await failure(store.put(hash, Buffer.from('wrong')))).message, /content hashes to /);
  assert.equal(filesIn(join(spool, 'blobs')), []);
});

test('pieces out of order, too long, short or not asked for are refused', async () => {
  const { receiver, hash, spool } = await receiverFor('0123456789');
  const refusal = (reason: string) => `blob "${hash}" refused: ${reason}`;
  assert.is((await failure(receiver.receive([[hash, 4, Buffer.from('4567'), false]]))).message, refusal('first piece at offset 4'));
  await receiver.receive([[hash, 0, Buffer.from('0123'), false]]);
  assert.is((await failure(receiver.receive([[hash, 8, Buffer.from('89'), true]]))).message, refusal('piece at offset 8, expected 4'));
  assert.equal(filesIn(join(spool, 'blobs')), []);
  assert.is((await failure(receiver.receive([[hash, 0, Buffer.from('0123456789!'), true]]))).message, refusal('longer than 10 bytes'));
  assert.is((await failure(receiver.receive([[hash, 0, Buffer.from('01234'), true]]))).message, refusal('ended at 5 bytes, the manifest says 10'));
  assert.match((await failure(receiver.receive([[sha('other'), 0, Buffer.from('other'), true]]))).message, /not a file of the manifest/);
  await receiver.receive([[hash, 0, Buffer.from('01234'), false]]);
  await receiver.abort();
  assert.equal(filesIn(join(spool, 'blobs')), []);
  assert.ok(await receiver.receive([[hash, 0, Buffer.from('0123456789'), true]]));
});

test('a batch carries many blobs; a bad piece in it is refused and only whole blobs remain', async () => {
  const spool = freshDir();
  const store = await BlobStore.open(spool);
  const contents = ['first', 'second', 'third'];
  const receiver = new BlobReceiver(store, { entries: contents.map((c) => file(`${c}.js`, c)) });
  const error = await failure(receiver.receive([
    [sha('first'), 0, Buffer.from('first'), true],
    [sha('second'), 0, Buffer.from('sec'), false],
    [sha('third'), 0, Buffer.from('THIRD'), true],
    [sha('second'), 3, Buffer.from('ond'), true],
  ]));
  assert.match(error.message, new RegExp(`^blob "${sha('third')}" refused: content hashes to `));
  assert.equal(await store.missing({ entries: contents.map((c) => file(`${c}.js`, c)) }), [sha('third')]);
  assert.equal(filesIn(join(spool, 'blobs', 'tmp')), []);
  assert.is(await receiver.receive([[sha('third'), 0, Buffer.from('third'), true]]), 1);
  assert.is((await failure(receiver.receive([]))).message, 'blob "" refused: a batch of 0 pieces');
});

test('small files travel many to a call, large ones in bounded pieces', async () => {
  const root = freshDir();
  writeTree(root, { 'package.json': '{}', 'a.js': 'a', 'b.js': 'b', 'big.bin': 'x'.repeat(10_000) });
  const manifest = await buildManifest(root, { exclude: [] });
  const receiver = new BlobReceiver(await BlobStore.open(freshDir()), manifest);
  const calls: number[][] = [];
  const send = (pieces: Piece[]) => (calls.push(pieces.map((piece) => piece[2].length)), receiver.receive(pieces));
  assert.is(await sendBlobs(root, manifest, manifest.entries.map((e) => (e as { hash: string }).hash), send, { chunkSize: 4096 }), 10_004);
  assert.equal(calls, [[1, 1, 4096, 4096, 1808, 2]]);
});

test('pieces of one blob in one batch must be in order', async () => {
  const { receiver, hash, spool } = await receiverFor('0123456789');
  const error = await failure(receiver.receive([[hash, 0, Buffer.from('0123'), false], [hash, 6, Buffer.from('6789'), true]]));
  assert.is(error.message, `blob "${hash}" refused: piece at offset 6, expected 4`);
  assert.equal(filesIn(join(spool, 'blobs')), []);
});

test('a spool of the older layout, blobs under two-digit directories, is emptied of them when opened', async () => {
  const spool = freshDir();
  const old = join(spool, 'blobs', sha('old').slice(0, 2));
  mkdirSync(old, { recursive: true });
  writeFileSync(join(old, sha('old')), 'old');
  const store = await BlobStore.open(spool);
  assert.not.ok(lstatSync(old, { throwIfNoEntry: false }), 'the old directory is gone');
  await store.put(sha('new'), Buffer.from('new'));
  assert.ok(await store.has(sha('new')));
});

const MARKER = 'unsynced';
const bootId = (): string => readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();

test('blobs arrive unsynced under a durable marker, which a checkpoint removes', async () => {
  const { store, receiver, hash, spool } = await receiverFor('content');
  assert.not.ok(lstatSync(join(spool, 'blobs', MARKER), { throwIfNoEntry: false }));
  assert.is(await receiver.receive([[hash, 0, Buffer.from('content'), true]]), 1);
  assert.is(readFileSync(join(spool, 'blobs', MARKER), 'utf8'), bootId());
  await store.checkpoint();
  assert.not.ok(lstatSync(join(spool, 'blobs', MARKER), { throwIfNoEntry: false }));
  assert.ok(await store.has(hash));
});

/** A store holding `whole` and `torn` (right name, size and seal, wrong bytes), left with `marker`. */
async function crashedStore(marker: string): Promise<string> {
  const spool = freshDir();
  const store = await BlobStore.open(spool);
  await store.put(sha('whole'), Buffer.from('whole'));
  await store.put(sha('torn!'), Buffer.from('torn!'));
  await store.checkpoint();
  const torn = store.path(sha('torn!'));
  chmodSync(torn, 0o644);
  writeFileSync(torn, '\0\0\0\0\0');
  utimesSync(torn, 0, 0);
  writeFileSync(join(spool, 'blobs', MARKER), marker);
  return spool;
}

test('after a reboot that left the marker, torn blobs are dropped and whole ones kept', async () => {
  const spool = await crashedStore('an earlier boot');
  const store = await BlobStore.open(spool);
  assert.ok(await store.has(sha('whole')));
  assert.not.ok(await store.has(sha('torn!')));
  assert.not.ok(lstatSync(join(spool, 'blobs', MARKER), { throwIfNoEntry: false }));
});

test('after a daemon restart on the same boot, the page cache holds the blobs: the marker waits for a checkpoint', async () => {
  const spool = await crashedStore(bootId());
  const store = await BlobStore.open(spool);
  assert.ok(await store.has(sha('torn!')), 'not re-hashed: no data was lost');
  assert.ok(lstatSync(join(spool, 'blobs', MARKER), { throwIfNoEntry: false }));
  await store.checkpoint();
  assert.not.ok(lstatSync(join(spool, 'blobs', MARKER), { throwIfNoEntry: false }));
});

test('a file changed after the manifest was built is refused at the source', async () => {
  const { root } = makeProgram();
  const manifest = await buildManifest(root, { exclude: [join(root, 'spool')] });
  writeFileSync(join(root, 'package.json'), '{}');
  const error = await failure(sendBlobs(root, manifest, [sha('{"name":"app"}')], async () => undefined));
  assert.is(error.message, `blob "${sha('{"name":"app"}')}" refused: package.json changed since the manifest was built`);
});

test('chunkFile yields bounded pieces, and one empty piece for an empty file', async () => {
  const dir = freshDir();
  writeTree(dir, { big: 'x'.repeat(10_000), empty: '' });
  const sizes = async (path: string) => {
    const seen: number[] = [];
    for await (const piece of chunkFile(join(dir, path), 4096)) seen.push(piece.length);
    return seen;
  };
  assert.equal(await sizes('big'), [4096, 4096, 1808]);
  assert.equal(await sizes('empty'), [0]);
});

test.run();
