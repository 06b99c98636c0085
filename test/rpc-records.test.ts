// Completion records on the wire, checked with a raw MessagePack-RPC peer: a client's hello
// binds its call numbers; a resent number is answered from its record, however the numbers
// fall (skipped, up to 2^32 - 1, many); acknowledged records go, and so do those past the limit.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { serve, STATS, type Server } from '../runtime/index.js';
import { openRaw, request, type Raw } from './helpers/raw.js';

let runs = 0;
let release: () => void = () => undefined;
const procedures = {
  count: () => ++runs,
  /** Runs once `release` is called; answers its run number. */
  held: () => new Promise<number>((done) => (release = () => done(++runs))),
};

let server: Server;
/** A peer without a hello, asking the stats: its calls leave no records. */
let plain: Raw;
let clients = 0;
const opened: Raw[] = [];

test.before(async () => {
  server = await serve('records', procedures, { daemon: false });
  plain = await openRaw(server.address);
  opened.push(plain);
});

test.after(async () => {
  for (const raw of opened) raw.close();
  await server.close();
});

/** A raw peer that said hello under a fresh client id (or the one given). */
async function hello(id = `client-${String(clients++).padStart(4, '0')}`, below = 0): Promise<Raw> {
  const raw = await openRaw(server.address);
  opened.push(raw);
  raw.send([2, 'rpcmig.hello', [id, below]]);
  return raw;
}

async function records(): Promise<number> {
  return ((await request(plain, 1, STATS, []))[3] as { records: number }).records;
}

/** Sends the calls pipelined and returns their replies' results, in msgid order. */
async function calls(raw: Raw, msgids: number[], method = 'count'): Promise<unknown[]> {
  for (const msgid of msgids) raw.send([0, msgid, method, []]);
  const results = new Map<number, unknown>();
  for (let i = 0; i < msgids.length; i++) {
    const [, msgid, error, result] = (await raw.next()) as [number, number, unknown, unknown];
    results.set(msgid, error ?? result);
  }
  return msgids.map((msgid) => results.get(msgid));
}

test('a resent call number is answered from its record and not run again, after a thousand more calls', async () => {
  const raw = await hello();
  const first = await calls(raw, Array.from({ length: 1000 }, (_, i) => i));
  const before = runs;
  assert.equal(await calls(raw, [3, 500, 999]), [first[3], first[500], first[999]]);
  assert.is(runs, before, 'no call ran again');
});

test('numbers up to 2^32 - 1, and numbers skipped, keep their records', async () => {
  const raw = await hello();
  const top = 0xffffffff;
  const msgids = [...Array.from({ length: 300 }, (_, i) => top - 1000 + 3 * i), top - 1, top];
  const first = await calls(raw, msgids);
  const before = runs;
  assert.equal(await calls(raw, [...msgids].reverse()), [...first].reverse());
  assert.is(runs, before, 'no call ran again');
});

test('acknowledged records are dropped: a resend under the acknowledgement is refused, one above is answered', async () => {
  const raw = await hello('acknowledging');
  const first = await calls(raw, Array.from({ length: 600 }, (_, i) => i));
  const held = await records();
  raw.send([2, 'rpcmig.hello', ['acknowledging', 512]]);
  const [refused, kept] = await calls(raw, [100, 550]);
  assert.equal((refused as { code: string }).code, 'BAD_REQUEST');
  assert.is(kept, first[550]);
  assert.is(await records(), held - 512);
});

test('a resend that arrives while its call runs is answered with the same outcome, and it runs once', async () => {
  const raw = await hello();
  raw.send([0, 7, 'held', []]);
  raw.send([0, 7, 'held', []]);
  await new Promise((done) => setTimeout(done, 20));
  const before = runs;
  release();
  const replies = [await raw.next(), await raw.next()];
  assert.equal(replies, [[1, 7, null, before + 1], [1, 7, null, before + 1]]);
  assert.is(runs, before + 1);
});

test('a call acknowledged while it runs leaves no record when it ends', async () => {
  const raw = await hello('giving-up');
  const held = await records();
  raw.send([0, 3, 'held', []]);
  await new Promise((done) => setTimeout(done, 20));
  raw.send([2, 'rpcmig.hello', ['giving-up', 4]]);
  release();
  await raw.next();
  assert.is(await records(), held);
});

test('one client keeps at most 65,536 records: past that the oldest go', async () => {
  const raw = await hello();
  const total = 65_536 + 100;
  const held = await records();
  for (let from = 0; from < total; from += 4096) {
    await calls(raw, Array.from({ length: Math.min(4096, total - from) }, (_, i) => from + i));
  }
  assert.is(await records(), held + 65_536);
  const ran = runs;
  assert.equal(await calls(raw, [total - 1]), [ran], 'the newest record is kept');
  assert.is(runs, ran);
});

test.run();
