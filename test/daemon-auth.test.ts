// The daemon's door (DESIGN §6): every connection proves the cluster key before anything else
// is read; each refusal is a clear error for the peer and one log line for the daemon, and
// the daemon goes on answering.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createHmac, randomBytes } from 'node:crypto';
import { chmodSync, writeFileSync } from 'node:fs';
import { createServer, connect, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { loadKey, openDaemon } from '../runtime/daemonlink.js';
import { RpcmigError } from '../runtime/errors.js';
import { encode } from '../runtime/wire.js';
import { linesAbout, rawExchange, startDaemonProcess, tempDir, writeKey, type DaemonProcess } from './helpers/daemon.js';
import { stop, waitFor } from './helpers/process.js';

const dir = tempDir();
const key = writeKey(dir);
const wrong = writeKey(dir, 'wrong.key');
let daemon: DaemonProcess;

test.before(async () => {
  daemon = await startDaemonProcess(key.file, dir, { RPCMIG_HANDSHAKE_TIMEOUT_MS: '400', RPCMIG_MAX_FRAME: '4096' });
});
test.after(() => stop(daemon.pid));

async function stillAnswers(): Promise<void> {
  const link = await openDaemon(daemon.address, loadKey(key.file));
  assert.equal(await link.call('ls', []), { servers: [], forwards: [] });
  link.close();
}

async function failure(work: Promise<unknown>): Promise<RpcmigError> {
  try {
    await work;
  } catch (error) {
    if (error instanceof RpcmigError) return error;
    throw error;
  }
  throw new Error('expected a failure');
}

/** The daemon's verdict frame after its hello: kind letter and reason byte. */
function verdict(received: Buffer): { kind: string; reason: number } {
  assert.is(received.length, 80, 'hello (40 bytes) then verdict (40 bytes)');
  assert.is(received.subarray(40, 46).toString('latin1'), 'rpcmig');
  return { kind: String.fromCharCode(received[46]), reason: received[48] };
}

async function refusedOnce(port: number, reason: string): Promise<void> {
  const line = `rpcmig daemon: refused 127.0.0.1:${port}: ${reason}`;
  await waitFor(() => linesAbout(daemon.stderr(), port).length > 0, 2000);
  assert.equal(linesAbout(daemon.stderr(), port), [line]);
}

test('a peer holding the key is accepted and can call the daemon', async () => {
  await stillAnswers();
});

test('a wrong key is refused: AUTH_FAILED for the peer, one log line for the daemon', async () => {
  const count = () => daemon.stderr().split('\n').filter((line) => line.endsWith(': wrong key')).length;
  const before = count();
  const error = await failure(openDaemon(daemon.address, loadKey(wrong.file)));
  assert.is(error.code, 'AUTH_FAILED');
  assert.is(error.message, `the daemon at ${daemon.address} refused the key`);
  assert.ok(await waitFor(() => count() === before + 1, 2000));
  await stillAnswers();
});

test('a peer without the key (plain MessagePack-RPC) is refused and nothing it sent is run', async () => {
  const exchange = await rawExchange(daemon.address, encode([0, 1, 'ls', []]));
  assert.ok(exchange.closed);
  assert.equal(verdict(exchange.received), { kind: 'R', reason: 2 });
  await refusedOnce(exchange.port, 'not an rpcmig handshake');
  await stillAnswers();
});

test('garbage before the handshake is refused', async () => {
  const exchange = await rawExchange(daemon.address, Buffer.concat([Buffer.from('GET / HTTP/1.1\r\n'), randomBytes(200)]));
  assert.equal(verdict(exchange.received), { kind: 'R', reason: 2 });
  await refusedOnce(exchange.port, 'not an rpcmig handshake');
  await stillAnswers();
});

test('an oversized handshake frame is refused', async () => {
  const exchange = await rawExchange(daemon.address, Buffer.concat([Buffer.from('rpcmigP\x01', 'latin1'), Buffer.alloc(5000)]));
  assert.equal(verdict(exchange.received), { kind: 'R', reason: 3 });
  await refusedOnce(exchange.port, 'sent more than the 72-byte handshake proof before the verdict');
  await stillAnswers();
});

test('a connection that never sends its proof is timed out', async () => {
  const exchange = await rawExchange(daemon.address, undefined, 3000);
  assert.ok(exchange.closed, 'closed by the daemon, well before the wait ended');
  assert.equal(verdict(exchange.received), { kind: 'R', reason: 4 });
  await refusedOnce(exchange.port, 'handshake timed out');
  await stillAnswers();
});

/** Runs the handshake by hand, as the spec in runtime/handshake.ts says; returns the proof sent. */
function handshakeByHand(address: string, hex: string): Promise<{ proof: Buffer; reply: string }> {
  const colon = address.lastIndexOf(':');
  const socket = connect({ host: address.slice(0, colon), port: Number(address.slice(colon + 1)) });
  const keyBytes = Buffer.from(hex, 'hex');
  let bytes = Buffer.alloc(0);
  let proof: Buffer | undefined;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => (socket.destroy(), reject(new Error('no handshake within 3 s'))), 3000);
    socket.on('data', (chunk: Buffer) => {
      bytes = Buffer.concat([bytes, chunk]);
      if (!proof && bytes.length >= 40) {
        const nc = randomBytes(32);
        const mac = createHmac('sha256', keyBytes).update('rpcmig-client').update(bytes.subarray(8, 40)).update(nc).digest();
        proof = Buffer.concat([Buffer.from('rpcmigP\x01', 'latin1'), nc, mac]);
        socket.write(proof);
      }
      if (proof && bytes.length >= 80) {
        clearTimeout(timer);
        socket.destroy();
        resolve({ proof, reply: bytes.subarray(40, 48).toString('latin1') });
      }
    });
  });
}

test('a replayed handshake is refused: every connection has a fresh nonce', async () => {
  const first = await handshakeByHand(daemon.address, key.hex);
  assert.is(first.reply, 'rpcmigA\x01', 'the proof was good on its own connection');
  const replay = await rawExchange(daemon.address, first.proof);
  assert.equal(verdict(replay.received), { kind: 'R', reason: 1 });
  await refusedOnce(replay.port, 'wrong key');
  await stillAnswers();
});

test('a message over the size limit after the handshake closes that connection only', async () => {
  const link = await openDaemon(daemon.address, loadKey(key.file));
  // Over 64 KiB, so that it spans TCP chunks: msgpackr enforces the limit on what it buffers.
  const error = await failure(link.call('lookup', ['x'.repeat(1 << 20)]));
  assert.is(error.code, 'NO_DAEMON');
  assert.is(error.message, `the daemon at ${daemon.address} closed the connection before answering lookup`);
  await waitFor(() => /rpcmig daemon: closed 127\.0\.0\.1:\d+: unreadable input/.test(daemon.stderr()), 2000);
  assert.match(daemon.stderr(), /rpcmig daemon: closed 127\.0\.0\.1:\d+: unreadable input/);
  await stillAnswers();
});

/** A fake daemon: says hello, reads the proof, and answers `reply(nd, proof)`. */
async function fakeDaemon(reply: (proof: Buffer) => Buffer): Promise<{ address: string; close(): void }> {
  const server = createServer((socket) => {
    socket.on('error', () => undefined);
    socket.write(Buffer.concat([Buffer.from('rpcmigH\x01', 'latin1'), randomBytes(32)]));
    socket.once('data', (proof: Buffer) => socket.end(reply(proof)));
  });
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  return { address: `127.0.0.1:${(server.address() as AddressInfo).port}`, close: () => server.close() };
}

test('a peer refuses a daemon that cannot prove it holds the key', async () => {
  const fake = await fakeDaemon(() => Buffer.concat([Buffer.from('rpcmigA\x01', 'latin1'), randomBytes(32)]));
  const error = await failure(openDaemon(fake.address, loadKey(key.file)));
  fake.close();
  assert.is(error.code, 'AUTH_FAILED');
  assert.is(error.message, `the daemon at ${fake.address} could not prove it holds the cluster key`);
});

test('a peer that is not a daemon, or no peer at all, is NO_DAEMON naming the address', async () => {
  const http = createServer((socket) => socket.end('HTTP/1.1 400 Bad Request\r\n\r\n'));
  await new Promise<void>((done) => http.listen(0, '127.0.0.1', done));
  const address = `127.0.0.1:${(http.address() as AddressInfo).port}`;
  const notDaemon = await failure(openDaemon(address, loadKey(key.file)));
  assert.is(notDaemon.code, 'NO_DAEMON');
  assert.is(notDaemon.message, `the peer at ${address} answered, but it is not an rpcmig daemon`);
  await new Promise((done) => http.close(done));
  const nobody = await failure(openDaemon(address, loadKey(key.file)));
  assert.is(nobody.code, 'NO_DAEMON');
  assert.is(nobody.message, `no daemon at ${address} (connection refused)`);
});

test('loadKey refuses no key, a missing file, a file others can read, and a file without a key', () => {
  const message = (work: () => unknown) => {
    try {
      work();
    } catch (error) {
      assert.is((error as RpcmigError).code, 'AUTH_FAILED');
      return (error as Error).message;
    }
    throw new Error('expected a refusal');
  };
  const saved = process.env.RPCMIG_KEY_FILE;
  delete process.env.RPCMIG_KEY_FILE;
  assert.is(message(() => loadKey()), 'no cluster key: pass --key-file FILE or set RPCMIG_KEY_FILE (rpcmig keygen FILE writes one)');
  if (saved !== undefined) process.env.RPCMIG_KEY_FILE = saved;
  const missing = join(dir, 'missing.key');
  assert.is(message(() => loadKey(missing)), `cannot read the key file ${missing}: it does not exist`);
  const open = writeKey(dir, 'open.key', 0o600);
  chmodSync(open.file, 0o644);
  assert.is(message(() => loadKey(open.file)), `the key file ${open.file} is accessible by group or others (mode 0644); chmod 600 it`);
  const junk = join(dir, 'junk.key');
  writeFileSync(junk, 'hunter2-secret\n', { mode: 0o600 });
  const text = message(() => loadKey(junk));
  assert.is(text, `the key file ${junk} does not hold a key (64 hex digits, as rpcmig keygen writes)`);
  assert.equal(loadKey(key.file), Buffer.from(key.hex, 'hex'));
});

test('one host may hold so many connections; past that a connection is closed at once, and room comes back', async () => {
  const limited = await startDaemonProcess(key.file, join(dir, 'limited'), { RPCMIG_MAX_CONNECTIONS_PER_PEER: '3' });
  const colon = limited.address.lastIndexOf(':');
  const open = () => {
    const socket = connect({ host: limited.address.slice(0, colon), port: Number(limited.address.slice(colon + 1)) });
    socket.on('error', () => undefined);
    const state = { hello: false, closed: false, socket };
    socket.on('data', () => (state.hello = true));
    socket.on('close', () => (state.closed = true));
    return state;
  };
  try {
    const held = [open(), open(), open()];
    assert.ok(await waitFor(() => held.every((s) => s.hello), 2000), 'three are greeted');
    const fourth = open();
    assert.ok(await waitFor(() => fourth.closed, 2000), 'the fourth is closed');
    assert.is(fourth.hello, false, 'without a word');
    assert.match(limited.stderr(), /refused 127\.0\.0\.1:\d+: 127\.0\.0\.1 holds 3 connections already/);
    held[0].socket.destroy();
    await waitFor(() => held[0].closed, 2000);
    await new Promise((resolve) => setTimeout(resolve, 50));
    const fifth = open();
    assert.ok(await waitFor(() => fifth.hello, 2000), 'a place freed is given again');
    for (const s of [...held, fifth]) s.socket.destroy();
  } finally {
    await stop(limited.pid);
  }
});

test('the key never appears in the daemon output', () => {
  const output = daemon.stdout() + daemon.stderr();
  assert.not.ok(output.includes(key.hex));
  assert.not.ok(output.includes(wrong.hex));
  assert.match(daemon.stderr(), /refused/);
});

test.run();
