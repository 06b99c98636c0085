// The server speaks MessagePack-RPC as the specification says, checked with a raw client
// built from msgpackr alone: requests, pipelining out of order, notifications, whereis, and
// every error code a server sends.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { serve, type Server } from '../runtime/index.js';
import { openRaw, request, type Raw } from './helpers/raw.js';

const sleep = (ms: number) => new Promise<void>((done) => setTimeout(done, ms));
const notes: string[] = [];

const procedures = {
  add: (a: number, b: number) => a + b,
  async slow(ms: number, value: string) {
    await sleep(ms);
    return value;
  },
  note(text: string) {
    notes.push(text);
  },
  fail(message: string): never {
    throw new Error(message);
  },
  async failLater(message: string): Promise<never> {
    await sleep(1);
    throw new Error(message);
  },
  plain: (value: unknown) => value,
};

let server: Server;
let raw: Raw;

test.before(async () => {
  server = await serve('proto', procedures, { daemon: false });
  raw = await openRaw(server.address);
});

test.after(async () => {
  raw.close();
  await server.close();
});

test('a request [0, msgid, method, params] is answered [1, msgid, nil, result]', async () => {
  assert.equal(await request(raw, 7, 'add', [2, 3]), [1, 7, null, 5]);
});

test('pipelined calls are answered as they finish: a slow call before a fast one replies last', async () => {
  raw.send([0, 1, 'slow', [80, 'slow']]);
  raw.send([0, 2, 'slow', [1, 'fast']]);
  raw.send([0, 3, 'add', [1, 1]]);
  const replies = [await raw.next(), await raw.next(), await raw.next()];
  assert.equal(replies, [[1, 3, null, 2], [1, 2, null, 'fast'], [1, 1, null, 'slow']]);
});

test('a notification [2, method, params] runs and gets no reply', async () => {
  raw.send([2, 'note', ['hello']]);
  assert.equal(await request(raw, 9, 'add', [0, 0]), [1, 9, null, 0]);
  assert.equal(notes, ['hello']);
});

test('rpcmig.whereis answers the server address', async () => {
  assert.equal(await request(raw, 10, 'rpcmig.whereis', []), [1, 10, null, server.address]);
});

test('plain MessagePack maps and arrays arrive as plain objects and arrays', async () => {
  const value = { word: 'apple', tags: ['fruit'], nested: { n: 1 } };
  assert.equal(await request(raw, 11, 'plain', [value]), [1, 11, null, value]);
});

test('a procedure that throws gives APP_ERROR with its message, and the server goes on', async () => {
  const [, , error] = await request(raw, 12, 'fail', ['no such word']);
  assert.equal(error, { code: 'APP_ERROR', message: 'no such word' });
  const [, , later] = await request(raw, 13, 'failLater', ['later']);
  assert.equal(later, { code: 'APP_ERROR', message: 'later' });
  assert.equal(await request(raw, 14, 'add', [1, 2]), [1, 14, null, 3]);
});

test('an unknown method gives NO_SUCH_METHOD, inherited and built-in object names included', async () => {
  for (const method of ['nope', 'constructor', '__proto__', 'toString', 'hasOwnProperty', 'valueOf']) {
    const [, , error] = (await request(raw, 20, method, [])) as [number, number, { code: string }];
    assert.is(error.code, 'NO_SUCH_METHOD', method);
  }
});

test('a request with the wrong shape gives BAD_REQUEST when its msgid can be read', async () => {
  const shapes: unknown[] = [
    [0, 30, 'add', { a: 1 }],
    [0, 30, 'add', 'not an array'],
    [0, 30, 42, []],
    [0, 30, 'add'],
    [1, 30, null, 'a response'],
    [9, 30, 'add', []],
  ];
  for (const shape of shapes) {
    raw.send(shape);
    const [type, msgid, error] = (await raw.next()) as [number, number, { code: string; message: string }];
    assert.equal([type, msgid, error.code], [1, 30, 'BAD_REQUEST'], JSON.stringify(shape));
    assert.ok(error.message.length > 0);
  }
  assert.equal(await request(raw, 31, 'add', [4, 4]), [1, 31, null, 8]);
});

test('a message with no readable msgid closes that connection only', async () => {
  const other = await openRaw(server.address);
  other.send({ not: 'a message' });
  assert.ok(await other.closedWithin(2000));
  assert.equal(await request(raw, 40, 'add', [5, 5]), [1, 40, null, 10]);
});

test('close() lets calls executing finish and reply, then stops', async () => {
  const local = await serve('draining', procedures, { daemon: false });
  const peer = await openRaw(local.address);
  peer.send([0, 1, 'slow', [50, 'done']]);
  await sleep(10);
  const closed = local.close();
  assert.equal(await peer.next(), [1, 1, null, 'done']);
  await closed;
  assert.ok(await peer.closedWithin(2000));
});

test.run();
