// Exactly once when replies are lost (issue 6, after RIFL): calls carry the client's id and
// number; the server answers a resent call from its completion record, and the records travel
// with the state, so a resend that lands at the destination of a move is answered there too.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { Packr, UnpackrStream } from 'msgpackr';
import { connect, STATS, invoke, type Client, type RpcmigError } from '../runtime/index.js';
import { breakdown, Cluster, COUNTER } from './helpers/cluster.js';
import type { DaemonProcess } from './helpers/daemon.js';
import { lossyProxy } from './helpers/proxy.js';

interface Counter {
  incr(by?: number): number;
  get(): number;
  where(): { pid: number; moves: number };
}
type Stats = { [STATS](): { clients: number; records: number } };

const cluster = new Cluster();
let a: DaemonProcess;
let b: DaemonProcess;
let names = 0;
const opened: Array<{ close(): Promise<void> }> = [];

test.before(async () => {
  a = await cluster.daemon();
  b = await cluster.daemon();
});
test.after(async () => {
  await Promise.all(opened.map((client) => client.close()));
  await cluster.close();
});

async function counter(env: NodeJS.ProcessEnv = {}): Promise<{ name: string; address: string }> {
  const name = `once${names++}`;
  const started = await cluster.server(COUNTER, a, ['--name', name], env);
  return { name, address: started.ready[0] };
}

async function direct<T extends object>(address: string, timeout = 20_000): Promise<Client<T>> {
  const colon = address.lastIndexOf(':');
  const client = await connect<T>({ host: address.slice(0, colon), port: Number(address.slice(colon + 1)), timeout });
  opened.push(client);
  return client;
}

async function named<T extends object>(name: string): Promise<Client<T>> {
  const client = await connect<T>(name, { daemon: a.address, keyFile: cluster.key.file });
  opened.push(client);
  return client;
}

test('replies lost with their connections: every call is resent and counted once', async () => {
  const { address } = await counter();
  const proxy = await lossyProxy(address);
  proxy.dropEvery(97);
  const clients = await Promise.all(Array.from({ length: 4 }, () => direct<Counter>(proxy.address)));
  const results = await Promise.allSettled(clients.flatMap((client) => Array.from({ length: 500 }, () => client.incr(1))));
  const failed = results.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason));
  assert.equal(failed, []);
  assert.ok(proxy.dropped >= 10, `only ${proxy.dropped} replies dropped`);
  assert.is(await (await direct<Counter>(address)).get(), 2000);
  await proxy.close();
});

test('a reply lost just before a move: the resend lands at the destination and is answered from the moved record', async () => {
  const { name, address } = await counter();
  const proxy = await lossyProxy(address);
  const client = await direct<Counter>(proxy.address);
  assert.is(await client.incr(1), 1);
  proxy.dropNext(false);
  const lost = client.incr(10);
  await new Promise((resolve) => setTimeout(resolve, 100));
  breakdown(await cluster.migrate(name, a, b, ['--grace', '2']));
  proxy.cut();
  assert.is(await lost, 11, 'the outcome the call had at the source');
  assert.is(await client.get(), 11);
  assert.is((await client.where()).moves, 1);
  await proxy.close();
});

test('the Jepsen counter check across moves: every read lies between acknowledged and attempted increments', async () => {
  const { name, address } = await counter();
  const proxy = await lossyProxy(address);
  proxy.dropEvery(150);
  const clients = await Promise.all(Array.from({ length: 4 }, () => direct<Counter>(proxy.address)));
  let attempted = 0;
  let acknowledged = 0;
  const violations: string[] = [];
  const errors: string[] = [];
  let running = true;
  const work = clients.map(async (client, c) => {
    for (let i = 0; running && i < 1_000_000; i++) {
      if ((i + c) % 10 === 0) {
        const floor = acknowledged;
        const value = await client.get();
        if (value < floor || value > attempted) violations.push(`read ${value} outside [${floor}, ${attempted}]`);
        continue;
      }
      attempted++;
      await client.incr(1).then(() => acknowledged++, (error: Error) => errors.push(error.message));
    }
  });
  for (const [from, to] of [[a, b], [b, a], [a, b]]) {
    await new Promise((resolve) => setTimeout(resolve, 400));
    breakdown(await cluster.migrate(name, from, to, ['--grace', '1']));
  }
  await new Promise((resolve) => setTimeout(resolve, 300));
  running = false;
  await Promise.all(work);
  assert.equal(errors, []);
  assert.equal(violations, []);
  assert.ok(acknowledged > 500, `only ${acknowledged} increments`);
  assert.is(await clients[0].get(), acknowledged);
  await proxy.close();
});

test('records stay bounded under 10,000 clients that come and go: acknowledged outcomes and silent clients are forgotten', async () => {
  const { name, address } = await counter({ RPCMIG_RECORD_LEASE_MS: '500' });
  const steady = await direct<Counter & Stats>(address);
  for (let i = 0; i < 2000; i++) await steady.incr(1);
  const held = await invoke(steady, STATS);
  assert.ok(held.records <= 300, `${held.records} records kept for one client that acknowledges`);
  for (let batch = 0; batch < 50; batch++) {
    await Promise.all(Array.from({ length: 200 }, async () => {
      const colon = address.lastIndexOf(':');
      const passing = await connect<Counter>({ host: address.slice(0, colon), port: Number(address.slice(colon + 1)) });
      await passing.incr(1);
      await passing.close();
    }));
  }
  await new Promise((resolve) => setTimeout(resolve, 1200));
  const later = await invoke(steady, STATS);
  assert.ok(later.clients <= 2, `${later.clients} clients after the lease`);
  assert.ok(later.records <= 300, `${later.records} records after the lease`);
  const moved = breakdown(await cluster.migrate(name, a, b, ['--grace', '0.2']));
  assert.ok((moved.state_bytes as number) < 20_000, `state file of ${moved.state_bytes} bytes`);
  assert.is(await steady.get(), 12_000);
});

test('plain clients without a hello keep working: no records are made for them', async () => {
  const { address } = await counter();
  const colon = address.lastIndexOf(':');
  const plain = await connect<Counter & Stats>({ host: address.slice(0, colon), port: Number(address.slice(colon + 1)), exactlyOnce: false });
  opened.push(plain);
  for (let i = 0; i < 100; i++) await plain.incr(1);
  assert.equal(await invoke(plain, STATS), { clients: 0, records: 0 });
});

/** A hand-made server answering every request with the error `reply` gives (msgpackr alone). */
async function redirector(reply: () => Record<string, unknown>): Promise<{ address: string; connections: number; close(): void }> {
  const packr = new Packr({ useRecords: false });
  const state = { connections: 0 };
  const net = createServer((socket) => {
    state.connections++;
    socket.on('error', () => undefined);
    const stream = new UnpackrStream({ useRecords: false });
    stream.on('data', (message: unknown[]) => message[0] === 0 && socket.write(packr.pack([1, message[1], reply(), null])));
    socket.pipe(stream);
  });
  await new Promise<void>((done) => net.listen(0, '127.0.0.1', done));
  return { address: `127.0.0.1:${(net.address() as AddressInfo).port}`, get connections() { return state.connections; }, close: () => net.close() };
}

const movedTo = (to: string, epoch: number) => ({ code: 'MOVED', message: `moved to ${to}`, to, epoch });

test('a client never follows a redirect to an older epoch, and a redirect cycle ends', async () => {
  const old = await redirector(() => ({ code: 'APP_ERROR', message: 'the stale server answered' }));
  const second = await redirector(() => movedTo(old.address, 1));
  const first = await redirector(() => movedTo(second.address, 2));
  const client = await direct<Counter>(first.address, 5000);
  const stale = await client.incr(1).then(() => undefined, (error: RpcmigError) => error);
  assert.is(stale?.code, 'MOVED');
  assert.match(stale!.message, /redirected more than 8 times; not executed/);
  assert.is(old.connections, 0, 'the redirect to epoch 1 after epoch 2 was not followed');
  const ends = { left: '' };
  const right = await redirector(() => movedTo(ends.left, 2));
  const left = await redirector(() => movedTo(right.address, 1));
  ends.left = left.address;
  const started = Date.now();
  const cycling = await direct<Counter>(left.address, 5000);
  assert.is((await cycling.incr(1).then(() => undefined, (error: RpcmigError) => error))?.code, 'MOVED');
  assert.ok(Date.now() - started < 3000, 'the cycle ends long before the deadline');
  for (const server of [old, second, first, right, left]) server.close();
});

test('a server restored from an old snapshot while a newer epoch serves answers MOVED to it: one owner', async () => {
  const { name, address } = await counter();
  const client = await direct<Counter & { save(path: string): number }>(address);
  await client.incr(5);
  const file = join(cluster.dir, `${name}.old.state`);
  await client.save(file);
  await client.incr(1);
  const figures = breakdown(await cluster.migrate(name, a, b, ['--grace', '0.2']));
  const stale = await cluster.server(COUNTER, a, ['--name', name], { RPCMIG_RESTORE: file });
  assert.match(stale.stderr(), /epoch 1 is older than epoch 1 at .*; answering MOVED/);
  const listed = (await cluster.ls(a)).servers.find((s) => s.pid === stale.pid);
  assert.is(listed?.state, 'moved');
  const fresh = await direct<Counter>(stale.ready[0]);
  assert.is(await fresh.incr(1), 7, 'the call went to the newer server, which had 6');
  assert.is((await fresh.where()).pid, (await cluster.serving(b, name)).pid);
  assert.is(await (await named<Counter>(name)).get(), 7, 'the name resolves to the newer server');
  assert.match(figures.address as string, /:\d+$/);
});

test.run();
