// A malicious peer (issue 7): it holds the cluster key and plays a source daemon against a real
// destination daemon through the daemon-to-daemon methods (prepare, blob, prestart, state,
// start, abort), sending what a real source never would. Each attack is refused with a clear
// error; nothing is left in the spool outside the move's own directory, which goes with the
// move; nothing it started runs on or registers; and the daemon goes on serving.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadKey, openDaemon, parseAddress, type DaemonLink } from '../runtime/daemonlink.js';
import { connect, RpcmigError } from '../runtime/index.js';
import { encodeState } from '../runtime/state.js';
import { buildManifest, findPackageRoot, manifestId, sendBlobs, type Manifest, type Placed } from '../daemon/transfer.js';
import { Cluster, COUNTER, startedBy } from './helpers/cluster.js';
import { linesAbout, type DaemonProcess } from './helpers/daemon.js';
import { isAlive, waitFor } from './helpers/process.js';
import { openRaw, request } from './helpers/raw.js';

const cluster = new Cluster();
let dst: DaemonProcess;
let spool: string;
let link: DaemonLink;
const key = loadKey(cluster.key.file);

test.before(async () => {
  dst = await cluster.daemon({ RPCMIG_START_TIMEOUT_MS: '8000' });
  spool = dst.spool;
  link = await openDaemon(dst.address, key);
});
test.after(async () => {
  link.close();
  await cluster.close();
});

const sha = (bytes: string | Buffer): string => createHash('sha256').update(bytes).digest('hex');
const file = (path: string, content = 'x', mode = 0o644) => ({ path, size: Buffer.byteLength(content), mode, hash: sha(content) });
const moveId = (): string => randomBytes(8).toString('hex');
/**
 * Every path in the spool, to show what a refused move left there; but the blob store's
 * marker of unsynced blobs, which comes and goes on its own timer.
 */
/** The spool, but for the spares' logs (spares come and go). */
// Spares and blank files come and go by themselves; neither is a move's.
const listing = (): string[] => readdirSync(spool, { recursive: true }).map(String)
  .filter((p) => p !== join('blobs', 'unsynced') && !p.startsWith('spares') && !p.startsWith(join('blobs', 'blank'))).sort();
const gone = (id: string): boolean => !listing().includes(join('arriving', id));

/** What a source sends first, for the counter fixture (nobody listens at the source's address). */
function shipment(name: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { id: moveId(), name, source: '127.0.0.1:1', entry: 'dist/counter/server.js', cwd: '', argv: ['--name', name], execArgv: [], ...extra };
}

async function refusal(call: Promise<unknown>): Promise<RpcmigError> {
  const error = await call.then(() => undefined, (e: unknown) => e);
  assert.instance(error, RpcmigError, 'expected a refusal');
  return error as RpcmigError;
}

/** No process was started for a move, and no server of that name registered. */
async function nothingRuns(name: string): Promise<void> {
  assert.ok(await waitFor(() => startedBy(dst.address).length === 0, 5000), `processes the daemon started: ${startedBy(dst.address)}`);
  const { servers } = (await link.call('ls', [])) as { servers: Array<{ name: string }> };
  assert.equal(servers.filter((s) => s.name === name), [], `${name} is not registered`);
}

const entries = (list: unknown[]) => ({ manifest: { entries: list } });
const huge = (n: number) => Array.from({ length: n }, (_, i) => file(`f${String(i).padStart(6, '0')}`));
const ATTACKS: Array<[string, Record<string, unknown>, string, string]> = [
  ['an absolute path', entries([file('/etc/cron.d/x')]), 'TRANSFER_REFUSED', 'program refused: "/etc/cron.d/x": absolute path'],
  ['a ".." path', entries([file('../../outside.js')]), 'TRANSFER_REFUSED', 'program refused: "../../outside.js": ".." path segment'],
  ['a control character', entries([file('a\nforged log line')]), 'TRANSFER_REFUSED', 'program refused: "a\\nforged log line": contains U+000A'],
  ['a symlink leaving the root', entries([{ path: 'lib/up', link: '../../..' }]), 'TRANSFER_REFUSED', 'program refused: "lib/up": symlink target "../../.." leaves the root'],
  ['an absolute symlink', entries([{ path: 'etc', link: '/etc' }]), 'TRANSFER_REFUSED', 'program refused: "etc": symlink target "/etc" is absolute'],
  ['a symlink chain leaving the root', entries([{ path: 'a', link: 'b/..' }, { path: 'b', link: 'c' }, { path: 'c', link: '..' }]), 'TRANSFER_REFUSED', 'program refused: "a": symlink target "b/.." leaves the root'],
  ['a symlink loop', entries([{ path: 'x', link: 'y' }, { path: 'y', link: 'x' }]), 'TRANSFER_REFUSED', 'program refused: "x": too many levels of symlinks'],
  ['a hard link', entries([{ path: 'h', type: 'hardlink', link: '/etc/shadow' }]), 'TRANSFER_REFUSED', 'program refused: "h": entry of unknown kind (link,path,type): only files and symlinks are shipped'],
  ['a device', entries([{ path: 'null', type: 'chardev', major: 1, minor: 3 }]), 'TRANSFER_REFUSED', 'program refused: "null": entry of unknown kind (major,minor,path,type): only files and symlinks are shipped'],
  ['a FIFO', entries([{ path: 'pipe', type: 'fifo' }]), 'TRANSFER_REFUSED', 'program refused: "pipe": entry of unknown kind (path,type): only files and symlinks are shipped'],
  ['a FIFO by its mode bits', entries([file('pipe', 'x', 0o10644)]), 'TRANSFER_REFUSED', 'program refused: "pipe": mode is neither 0o644 nor 0o755'],
  ['a setuid mode', entries([file('su', 'x', 0o4755)]), 'TRANSFER_REFUSED', 'program refused: "su": mode is neither 0o644 nor 0o755'],
  ['an NFD name', entries([file('cafe\u0301.js')]), 'TRANSFER_REFUSED', 'program refused: "cafe\u0301.js": not NFC-normalised'],
  ['names equal after case folding', entries([file('CAF\u00c9.js'), file('caf\u00e9.js')]), 'TRANSFER_REFUSED', 'program refused: "caf\u00e9.js": collides with "CAF\u00c9.js" after Unicode and case folding'],
  ['names equal after NFKC', entries([file('file.js'), file('\ufb01le.js')]), 'TRANSFER_REFUSED', 'program refused: "\ufb01le.js": collides with "file.js" after Unicode and case folding'],
  ['a huge file', entries([{ ...file('big.bin'), size: 2 ** 28 + 1 }]), 'TRANSFER_REFUSED', 'program refused: "big.bin": file exceeds 268435456 bytes'],
  ['an unsafe size', entries([{ ...file('big.bin'), size: 2 ** 53 }]), 'TRANSFER_REFUSED', 'program refused: "big.bin": size is not a safe integer'],
  ['a huge total', entries(['a', 'b', 'c', 'd', 'e'].map((n) => ({ ...file(n), size: 2 ** 28 }))), 'TRANSFER_REFUSED', 'program refused: "e": program exceeds 1073741824 bytes in total'],
  ['200,001 entries', entries(huge(200_001)), 'TRANSFER_REFUSED', 'program refused: program has more than 200000 entries'],
  ['a bad hash', entries([{ ...file('a.js'), hash: '../../etc/passwd' }]), 'TRANSFER_REFUSED', 'program refused: "a.js": hash is not 64 lowercase hex digits'],
  ['a field beside the entries', { manifest: { entries: [], run: 'sh -c id' } }, 'TRANSFER_REFUSED', 'program refused: not a manifest: expected { entries: [...] }'],
  ['an entry file outside the program', { ...entries([file('a.js')]), entry: '../../escape.js' }, 'MIGRATION_FAILED', 'entry must be a plain path inside the program; got "../../escape.js"'],
  ['an absolute working directory', { ...entries([file('dist/counter/server.js')]), cwd: '/etc' }, 'MIGRATION_FAILED', 'cwd must be a plain path inside the program; got "/etc"'],
  ['a server name that is a path', { ...entries([file('dist/counter/server.js')]), name: '../../x' }, 'BAD_REQUEST', 'a server name is 1-64 letters, digits, \'.\', \'_\' or \'-\', starting with a letter or digit; got "../../x"'],
];

ATTACKS.forEach(([what, extra, code, message], index) => {
  test(`prepare with ${what} is refused: nothing staged, nothing started, the daemon goes on`, async () => {
    const name = `attack${index}`;
    const before = listing();
    const ship = shipment(name, extra);
    const error = await refusal(link.call('prepare', [ship]));
    assert.is(error.code, code);
    assert.is(error.message, message);
    assert.equal(listing(), before, 'the spool is as it was');
    await nothingRuns(name);
    // The same move id, well formed, is taken at once: the refusal kept nothing of it.
    const tiny = { entries: [file('dist/counter/server.js', `// ${name}`)] };
    assert.equal(await link.call('prepare', [{ ...shipment(name), id: ship.id, manifest: tiny }]), { known: true, lacking: [tiny.entries[0].hash] });
    assert.ok(listing().includes(join('arriving', ship.id as string)));
    await link.call('abort', [ship.id, 'test']);
    assert.ok(gone(ship.id as string), 'the abort removed the move\'s directory');
  });
});

/** The counter's program, as the first move below ships it; later moves send its id alone. */
let program: Manifest;
let programRoot: string;
/** The counter fixture's schema fingerprints, read from its build. */
const BUILD = JSON.parse(/program\((\{[^}]*\})\)/.exec(readFileSync(COUNTER, 'utf8'))![1]) as Record<string, string>;

function stateFile(values: Record<string, unknown>, build: Record<string, string> = BUILD): Buffer {
  return encodeState(values, new Map(Object.keys(values).map((k) => [k, k.startsWith('rpcmig:') ? 'rpcmig-internal-1' : build[k]])));
}
const counterState = (name: string, count = 41) => stateFile({ 'counter/server.ts#count': count, 'counter/server.ts#history': { moves: 0, startedAt: [1] }, [`rpcmig:epoch:${name}`]: 3 });

test('a well-formed move from this peer serves: the harness speaks the protocol', async () => {
  programRoot = await findPackageRoot(COUNTER);
  // msgpackr's optional native part may come from this repository's node_modules, above the fixtures.
  let above: Placed = new Map();
  program = await buildManifest(programRoot, { exclude: [], above: (placed) => (above = placed) });
  const ship = shipment('peer-ok', { manifest: program });
  const id = ship.id as string;
  const { lacking } = (await link.call('prepare', [ship])) as { lacking: string[] };
  assert.ok(lacking.length > 0);
  await sendBlobs(programRoot, program, lacking, (pieces) => link.call('blob', [id, pieces]), { placed: above });
  assert.equal(await link.call('prestart', [id]), { standby: true });
  await link.call('state', [id, 0, counterState('peer-ok'), true]);
  const started = (await link.call('start', [id])) as { address: string; epoch: number; pid: number };
  assert.is(started.epoch, 4);
  const client = await connect<{ get(): number; where(): { moves: number } }>({ ...parseAddress(started.address, 0) });
  try {
    assert.is(await client.get(), 41);
    assert.is((await client.where()).moves, 1);
  } finally {
    await client.close();
  }
  await link.call('commit', [id]);
  assert.ok(gone(id));
  process.kill(started.pid, 'SIGTERM');
  assert.ok(await waitFor(() => !isAlive(started.pid), 5000));
  await nothingRuns('peer-ok');
});

test('blobs that do not match their hash, blobs not in the manifest and oversized pieces are refused; nothing is stored', async () => {
  const before = listing();
  const [lib, main] = [`exports.n = '${moveId()}';`, `require('./lib.js'); // ${moveId()}`];
  const manifest = { entries: [file('dist/counter/lib.js', lib), file('dist/counter/server.js', main)] };
  const ship = shipment('peer-blobs', { manifest });
  const id = ship.id as string;
  const { lacking } = (await link.call('prepare', [ship])) as { lacking: string[] };
  assert.equal(lacking, [sha(lib), sha(main)].sort());
  const refused = async (pieces: unknown[]) => (await refusal(link.call('blob', [id, pieces]))).message;
  const wrong = lib.replace('exports', 'process');
  assert.is(await refused([[sha(lib), 0, Buffer.from(wrong), true]]), `blob "${sha(lib)}" refused: content hashes to ${sha(wrong)}`);
  assert.is(await refused([[sha('other'), 0, Buffer.from('other'), true]]), `blob "${sha('other')}" refused: not a file of the manifest`);
  assert.is(await refused([[sha(main), 0, Buffer.from(main + ' '.repeat(4096)), true]]), `blob "${sha(main)}" refused: longer than ${main.length} bytes`);
  assert.is(await refused([[sha(main), 8, Buffer.from(main.slice(8)), true]]), `blob "${sha(main)}" refused: first piece at offset 8`);
  assert.is((await refusal(link.call('blob', [id, [[sha(lib), 0, 'not bytes', true]]]))).code, 'BAD_REQUEST');
  assert.is((await refusal(link.call('blob', [moveId(), [[sha(lib), 0, Buffer.from(lib), true]]]))).code, 'MIGRATION_FAILED');
  // The program cannot be put together: nothing is started.
  const error = await refusal(link.call('prestart', [id]));
  assert.is(error.message, `program refused: 2 blobs missing from the store, the first ${lacking[0]}`);
  await nothingRuns('peer-blobs');
  assert.equal(listing().filter((path) => !path.startsWith(join('arriving', id))), before, 'nothing stored outside the move\'s directory');
  await link.call('abort', [id, 'test']);
  assert.equal(listing(), before);
});

test('state pieces out of bounds or with gaps are refused, and a start without the whole state starts nothing', async () => {
  const ship = shipment('peer-pieces', { program: manifestId(program) });
  const id = ship.id as string;
  assert.equal(await link.call('prepare', [ship]), { known: true, lacking: [] });
  assert.is((await refusal(link.call('state', [id, 2 ** 32, Buffer.from('x'), false]))).message, 'state piece at 4294967296 exceeds 4294967296 bytes');
  assert.is((await refusal(link.call('state', [id, 1000, Buffer.from('x'), true]))).message, 'the state file arrived with gaps');
  assert.is((await refusal(link.call('state', [id, 'x', 'y', true]))).code, 'BAD_REQUEST');
  assert.is((await refusal(link.call('start', [id]))).message, 'the state file has not arrived whole');
  await nothingRuns('peer-pieces');
  await link.call('abort', [id, 'test']);
  assert.ok(gone(id));
});

test('an abort that comes while the destination prepares the standby starts nothing and keeps nothing', async () => {
  const before = listing();
  const ship = shipment('peer-early-abort', { program: manifestId(program) });
  const id = ship.id as string;
  assert.equal(await link.call('prepare', [ship]), { known: true, lacking: [] });
  // Sent together: the abort is taken while the prestart waits for the program's tree.
  const [prestart] = await Promise.allSettled([link.call('prestart', [id]), link.call('abort', [id, 'test'])]);
  assert.is(prestart.status, 'rejected', 'the prestart of an aborted move fails');
  assert.match((prestart as PromiseRejectedResult).reason.message, `migration ${id} was aborted`);
  assert.not.match(dst.stderr(), `migration ${id}: standby`, 'no standby was started');
  await nothingRuns('peer-early-abort');
  assert.equal(listing(), before, 'nothing of the move is kept');
});

test('a move aborted after its server started frees the name at once: the next move of that name is taken', async () => {
  const ship = shipment('peer-again', { program: manifestId(program) });
  const id = ship.id as string;
  assert.equal(await link.call('prepare', [ship]), { known: true, lacking: [] });
  assert.equal(await link.call('prestart', [id]), { standby: true });
  await link.call('state', [id, 0, counterState('peer-again'), true]);
  await link.call('start', [id]);
  // Rolled back at its commit (the program changed while it moved), and sent again at once.
  await link.call('abort', [id, 'test']);
  const again = shipment('peer-again', { program: manifestId(program) });
  assert.equal(await link.call('prepare', [again]), { known: true, lacking: [] });
  await link.call('abort', [again.id, 'test']);
  await nothingRuns('peer-again');
});

const BAD_STATES: Array<[string, (name: string) => Buffer, RegExp, string[]?]> = [
  ["rdict's state", () => stateFile({ 'rdict/server.ts#dict': new Map([['apple', 'a round fruit']]), 'rdict/server.ts#lookups': 7, 'rpcmig:epoch:rdict': 2 }), /the state file is rdict's, not peer-state0's/],
  ["another counter's state", () => counterState('other-counter'), /the state file is other-counter's, not peer-state1's/],
  ['a truncated state', (name) => counterState(name).subarray(0, -10), /state file is \d+ bytes, its header says \d+ \(truncated or padded\)/],
  ['a corrupted state', (name) => { const bytes = counterState(name); bytes[bytes.length - 3] ^= 0xff; return bytes; }, /state file checksum mismatch \(the file is corrupted\)/],
  ["another build's state", (name) => stateFile({ 'counter/server.ts#count': 1, [`rpcmig:epoch:${name}`]: 1 }, { ...BUILD, 'counter/server.ts#count': '0000000000000000' }), /changed: counter\/server\.ts#count/],
  ['no state file at all', () => Buffer.from('#!/bin/sh\nid\n'), /not an rpcmig state file \(bad magic\)/],
  ['a state and arguments for another name', () => counterState('peer-stolen'), /the server killed by SIGKILL before it served/, ['--name', 'peer-stolen']],
];

/** The pid the daemon logged for a move's standby. */
const startedPid = (log: string, id: string): string | undefined => new RegExp(`migration ${id}: standby for \\S+ pid (\\d+)`).exec(log)?.[1];

BAD_STATES.forEach(([what, make, reason, argv], index) => {
  test(`${what} is refused at start: what started is ended, nothing kept or registered`, async () => {
    const name = `peer-state${index}`;
    const before = listing();
    const ship = shipment(name, { program: manifestId(program), ...(argv ? { argv } : {}) });
    const id = ship.id as string;
    assert.equal(await link.call('prepare', [ship]), { known: true, lacking: [] });
    assert.equal(await link.call('prestart', [id]), { standby: true });
    await link.call('state', [id, 0, make(name), true]);
    const error = await refusal(link.call('start', [id]));
    assert.is(error.code, 'MIGRATION_FAILED');
    assert.match(error.message, reason, error.message);
    await link.call('abort', [id, error.message]);
    await nothingRuns(name);
    await nothingRuns('peer-stolen');
    const log = join('logs', `${name}-${id}.log`);
    assert.equal(listing(), [...before, log].sort(), 'only the server\'s log is kept');
    if (argv) assert.match(dst.stderr(), `refused register peer-stolen pid ${startedPid(dst.stderr(), id)}: move ${id} brings another server, not peer-stolen; ended it`);
  });
});

test('after the handshake, a frame over the limit closes only that connection; requests of the wrong shape are refused', async () => {
  const ship = shipment('peer-frames', { program: manifestId(program) });
  await link.call('prepare', [ship]);
  const raw = await openRaw(dst.address, key);
  const port = raw.socket.localPort!;
  raw.send([0, 1, 'prepare', 'not params']);
  assert.equal(await raw.next(), [1, 1, { code: 'BAD_REQUEST', message: 'params must be an array' }, null]);
  raw.send([0, 2, 42, []]);
  assert.equal(await raw.next(), [1, 2, { code: 'BAD_REQUEST', message: 'method must be a string' }, null]);
  assert.equal((await request(raw, 3, 'rm -rf', []))[2], { code: 'NO_SUCH_METHOD', message: 'the daemon has no method "rm -rf"' });
  assert.equal(((await request(raw, 4, 'state', [ship.id, -1, 'bytes', true]))[2] as { code: string }).code, 'BAD_REQUEST');
  assert.ok(((await request(raw, 5, 'hello', []))[3] as { address: string }).address, 'still answering');
  // A bin32 that announces 2 GiB: the daemon reads up to its 64 MiB limit, then hangs up.
  raw.write(Buffer.from([0x94, 0x00, 0x06, 0xa4, 0x62, 0x6c, 0x6f, 0x62, 0xc6, 0x80, 0, 0, 0]));
  const chunk = Buffer.alloc(2 ** 20);
  for (let sent = 0; sent < 80 && !raw.socket.destroyed && !(await raw.closedWithin(0)); sent++) {
    await new Promise((resolve) => raw.socket.write(chunk, resolve));
  }
  assert.ok(await raw.closedWithin(5000), 'the daemon closed the connection');
  assert.ok(await waitFor(() => linesAbout(dst.stderr(), port).some((l) => l.endsWith('unreadable input (a message larger than the 67108864-byte limit)')), 3000), dst.stderr());
  const other = await openRaw(dst.address, key);
  other.send('not a message');
  assert.ok(await other.closedWithin(5000), 'a value that is not a message closes its connection');
  // The move on the first connection is untouched.
  assert.equal(await link.call('status', [ship.id]), { phase: 'receiving' });
  assert.ok(isAlive(dst.pid), 'the daemon goes on');
  await link.call('abort', [ship.id, 'test']);
  assert.ok(gone(ship.id as string));
});

test.run();
