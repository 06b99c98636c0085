// The typed client: calls matched to replies under load, time-outs, a lost connection
// reported as an unknown outcome (never resent), connection failures, and contract codes.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { Packr, UnpackrStream } from 'msgpackr';
import { join } from 'node:path';
import { connect, invoke, RpcmigError, serve, type Client, type Server } from '../runtime/index.js';
import type { calc } from './programs/calc-server.js';
import { startNode, stop, stopAll } from './helpers/process.js';

const CALC = join(__dirname, 'programs', 'calc-server.js');
const ALONE = { ...process.env, RPCMIG_KEY_FILE: '', RPCMIG_DAEMON: '127.0.0.1:1' };

let server: Server;
let hits = 0;
const procedures = {
  add: (a: number, b: number) => a + b,
  tag: async (client: number, call: number) => `${client}/${call}`,
  /** Longer than any time-out below, short enough for close() to drain. */
  late: () => new Promise<string>((done) => setTimeout(() => done('late'), 1000)),
  fail: (message: string): never => {
    throw new Error(message);
  },
  close: () => 'remote close',
  count: () => ++hits,
  echo: <T>(value: T): T => value,
  wait: (ms: number, value: string) => new Promise<string>((done) => setTimeout(() => done(value), ms)),
};

async function rejection(promise: Promise<unknown>): Promise<RpcmigError> {
  try {
    await promise;
  } catch (error) {
    assert.instance(error, RpcmigError);
    return error as RpcmigError;
  }
  throw new assert.Assertion({ message: 'expected a rejection' } as never);
}

function hostPort(address: string): { host: string; port: number } {
  const colon = address.lastIndexOf(':');
  return { host: address.slice(0, colon), port: Number(address.slice(colon + 1)) };
}

test.before(async () => {
  server = await serve('client-test', procedures, { daemon: false });
});

test.after(async () => {
  await server.close();
  await stopAll();
});

test('a typed client calls procedures and gets their results', async () => {
  const client: Client<typeof procedures> = await connect<typeof procedures>(hostPort(server.address));
  const sum: number = await client.add(2, 40);
  assert.is(sum, 42);
  assert.is(await client.tag(1, 2), '1/2');
  assert.is(await invoke(client, 'close'), 'remote close');
  await client.close();
});

test('on one connection a fast call sent after a slow one is answered first', async () => {
  const client = await connect<typeof procedures>(hostPort(server.address));
  const order: string[] = [];
  await Promise.all([client.wait(80, 'slow'), client.wait(1, 'fast')].map((call) => call.then((value) => order.push(value))));
  assert.equal(order, ['fast', 'slow']);
  await client.close();
});

test('100 concurrent clients x 100 pipelined calls: every reply matches its call', async () => {
  const clients = await Promise.all(Array.from({ length: 100 }, () => connect<typeof procedures>(hostPort(server.address))));
  const results = await Promise.all(
    clients.map((client, c) => Promise.all(Array.from({ length: 100 }, (_, n) => client.tag(c, n)))),
  );
  results.forEach((replies, c) => replies.forEach((reply, n) => assert.is(reply, `${c}/${n}`)));
  await Promise.all(clients.map((client) => client.close()));
});

test('values cross the wire with the state file fidelity: bigint, Map, Set, Date, typed arrays, undefined', async () => {
  const client = await connect<typeof procedures>(hostPort(server.address));
  const value = {
    huge: -(2n ** 100n) + 1n,
    small: 7n,
    map: new Map<unknown, unknown>([['a', 1], [2, new Map([[{ k: 1 }, 'object key']])]]),
    set: new Set<unknown>([1, 'two', new Map([['in', 'set']])]),
    date: new Date(Date.UTC(1993, 0, 1)),
    bytes: new Uint8Array([1, 2, 3]),
    floats: new Float64Array([1.5, -2.25]),
    words: new Uint16Array([65535]),
    nothing: undefined,
    nested: [{ plain: { object: true } }, null],
  };
  const back = (await client.echo(value)) as typeof value;
  assert.equal(back, value);
  assert.ok('nothing' in back);
  assert.instance(back.map, Map);
  assert.instance(back.floats, Float64Array);
  await client.close();
});

test('a message spread over many TCP chunks arrives whole, Maps and all', async () => {
  const client = await connect<typeof procedures>(hostPort(server.address));
  const big = new Map(Array.from({ length: 20_000 }, (_, i) => [`word${i}`, { i, tags: new Set([i]) }]));
  const back = (await client.echo(big)) as typeof big;
  assert.instance(back, Map);
  assert.is(back.size, big.size);
  assert.equal(back.get('word19999'), { i: 19999, tags: new Set([19999]) });
  await client.close();
});

test('a call with no reply within the timeout fails TIMEOUT; the client goes on', async () => {
  const client = await connect<typeof procedures>({ ...hostPort(server.address), timeout: 100 });
  const started = Date.now();
  const error = await rejection(client.late());
  assert.is(error.code, 'TIMEOUT');
  assert.ok(Date.now() - started >= 90);
  assert.is(await client.add(1, 1), 2);
  await client.close();
});

test('each contract code reaches the caller as an RpcmigError with that code and message', async () => {
  const client = await connect<Record<string, (...args: unknown[]) => unknown>>(hostPort(server.address));
  const app = await rejection(client.fail('the word is missing'));
  assert.equal([app.code, app.message], ['APP_ERROR', 'the word is missing']);
  assert.is((await rejection(client.nothing())).code, 'NO_SUCH_METHOD');
  await client.close();
});

test('a call whose server dies is sent again until its deadline, then fails UNKNOWN_OUTCOME', async () => {
  const child = await startNode(CALC, { env: ALONE });
  const client = await connect<typeof calc>({ ...hostPort(child.ready[0]), timeout: 1000 });
  assert.is(await client.pid(), child.pid);
  const pending = rejection(client.slow(30_000, 'never'));
  await new Promise((done) => setTimeout(done, 50));
  await stop(child.pid, 'SIGKILL');
  const error = await pending;
  assert.is(error.code, 'UNKNOWN_OUTCOME');
  assert.match(error.message, /slow/);
  assert.is((await rejection(client.add(1, 1))).code, 'CONNECTION_FAILED');
  await client.close();
});

/** A hand-made server: answers every request through `reply` (msgpackr alone, no rpcmig). */
async function fakeServer(reply: (request: unknown[], socket: Socket) => void): Promise<{ address: string; close(): void }> {
  const net = createServer((socket) => {
    socket.on('error', () => undefined);
    const stream = new UnpackrStream({ useRecords: false });
    // requests only: the client's hello is a notification, and gets no answer
    stream.on('data', (request: unknown[]) => request[0] === 0 && reply(request, socket));
    socket.pipe(stream);
  });
  await new Promise<void>((done) => net.listen(0, '127.0.0.1', done));
  return { address: `127.0.0.1:${(net.address() as AddressInfo).port}`, close: () => net.close() };
}

test('notifications from the server are ignored; garbage fails the calls in flight UNKNOWN_OUTCOME', async () => {
  const packr = new Packr({ useRecords: false });
  const fake = await fakeServer(([, msgid, method], socket) => {
    if (method === 'ok') socket.write(Buffer.concat([packr.pack([2, 'hello', []]), packr.pack([1, msgid, null, 'fine'])]));
    else socket.write(Buffer.from([0x2a]));
  });
  const client = await connect<Record<string, () => string>>(hostPort(fake.address));
  assert.is(await client.ok(), 'fine');
  const error = await rejection(client.garbage());
  assert.is(error.code, 'UNKNOWN_OUTCOME');
  assert.match(error.message, /garbage/);
  await client.close();
  fake.close();
});

test('connecting where nothing listens fails CONNECTION_FAILED', async () => {
  const probe = createServer();
  await new Promise<void>((done) => probe.listen(0, '127.0.0.1', done));
  const { port } = probe.address() as AddressInfo;
  await new Promise<void>((done) => probe.close(() => done()));
  const error = await rejection(connect({ host: '127.0.0.1', port }));
  assert.is(error.code, 'CONNECTION_FAILED');
  assert.match(error.message, new RegExp(`127.0.0.1:${port}`));
});

test('closing the client fails the calls still waiting with CLOSED, and later calls too', async () => {
  const client = await connect<typeof procedures>(hostPort(server.address));
  const waiting = rejection(client.late());
  await new Promise((done) => setTimeout(done, 20));
  await client.close();
  assert.is((await waiting).code, 'CLOSED');
  assert.is((await rejection(client.add(1, 2))).code, 'CLOSED');
});

test('the client is not a thenable, so it can be awaited and returned from async functions', async () => {
  const client = await connect<typeof procedures>(hostPort(server.address));
  const again = await Promise.resolve(client);
  assert.is(await again.add(3, 4), 7);
  await client.close();
});

test.run();
