// Bad input on a server port, against a server in its own process: each is answered where it
// can be and closes that connection where it cannot; the process lives on, its other clients
// never notice, and it logs one line per bad connection.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { Packr } from 'msgpackr';
import { isAlive, startNode, stopAll, type Started } from './helpers/process.js';
import { openRaw, request, type Raw } from './helpers/raw.js';

const MAX_FRAME = 64 * 1024;
const packr = new Packr({ useRecords: false });
let child: Started;
let good: Raw;
let msgid = 1000;

test.before(async () => {
  const env = { ...process.env, RPCMIG_KEY_FILE: '', RPCMIG_DAEMON: '127.0.0.1:1' };
  child = await startNode(join(__dirname, 'programs', 'calc-server.js'), { args: [String(MAX_FRAME)], env });
  good = await openRaw(child.ready[0]);
});

test.after(async () => {
  good.close();
  await stopAll();
});

/** After each bad input: the process is alive and a client on another connection gets answers. */
async function assertStillServing(): Promise<void> {
  assert.ok(isAlive(child.pid), 'the server process is alive');
  const id = msgid++;
  assert.equal(await request(good, id, 'add', [id, 1]), [1, id, null, id + 1]);
}

/** Sends `bytes` on a new connection and reports whether the server hung up on it. */
async function sendBad(bytes: Buffer, endAfter = false): Promise<boolean> {
  const bad = await openRaw(child.ready[0]);
  bad.write(bytes);
  if (endAfter) bad.socket.end();
  const closed = await bad.closedWithin(3000);
  bad.close();
  return closed;
}

function badLines(): string[] {
  return child.stderr().split('\n').filter((line) => / \d+\.\d+\.\d+\.\d+:\d+: /.test(line));
}

test('bytes that are not MessagePack close that connection', async () => {
  assert.ok(await sendBad(Buffer.concat([Buffer.from([0xc1]), randomBytes(1024)])));
  await assertStillServing();
});

test('random bytes, then the end of the stream, close that connection', async () => {
  assert.ok(await sendBad(randomBytes(64 * 1024), true));
  await assertStillServing();
});

test('a frame cut short by the end of the stream closes that connection', async () => {
  const frame = packr.pack([0, 1, 'echo', ['x'.repeat(1000)]]);
  assert.ok(await sendBad(frame.subarray(0, 500), true));
  await assertStillServing();
});

test('a frame larger than maxFrame closes that connection', async () => {
  assert.ok(await sendBad(packr.pack([0, 1, 'echo', ['x'.repeat(4 * MAX_FRAME)]])));
  await assertStillServing();
});

test('a number or a map, with no msgid to answer, closes that connection', async () => {
  assert.ok(await sendBad(packr.pack(42)));
  assert.ok(await sendBad(packr.pack({ method: 'add', params: [1, 2] })));
  await assertStillServing();
});

test('a response, a wrong params shape and an unknown method are answered on a connection that stays open', async () => {
  const peer = await openRaw(child.ready[0]);
  const [, , response] = (await request(peer, 1, 'ignored', [])) as [number, number, { code: string }];
  assert.is(response.code, 'NO_SUCH_METHOD');
  peer.send([1, 2, null, 'a response']);
  assert.is(((await peer.next()) as [number, number, { code: string }])[2].code, 'BAD_REQUEST');
  peer.send([0, 3, 'add', { a: 1, b: 2 }]);
  assert.is(((await peer.next()) as [number, number, { code: string }])[2].code, 'BAD_REQUEST');
  assert.equal(await request(peer, 4, 'add', [1, 2]), [1, 4, null, 3]);
  peer.close();
  await assertStillServing();
});

test('a connection sending many bad messages is logged on one line', async () => {
  const before = badLines().length;
  const peer = await openRaw(child.ready[0]);
  for (let i = 0; i < 100; i++) peer.send([0, i, 'add', 'not params']);
  for (let i = 0; i < 100; i++) await peer.next();
  peer.close();
  await assertStillServing();
  assert.is(badLines().length, before + 1);
});

test('every bad connection above was logged, once each', () => {
  // 1 + 1 + 1 + 1 + 2 closed connections, 1 answered one, 1 from the test above
  assert.is(badLines().length, 8, badLines().join('\n'));
});

test.run();
