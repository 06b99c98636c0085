// A server's socket bound ahead by a standby (runtime/listener.ts): serve() takes it when it
// asks for the same host and any port, and binds its own otherwise; what connects before a
// server takes it is cut; it does not keep a process alive by itself.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { connect as connectSocket } from 'node:net';
import { join } from 'node:path';
import { connect, serve, type Server } from '../runtime/index.js';
import { listenAhead } from '../runtime/listener.js';

const servers: Server[] = [];

test.after(async () => {
  await Promise.all(servers.map((server) => server.close()));
});

/** How a plain TCP connection to `port` ends: 'closed' once the peer cut it, 'refused' if nothing listens. */
function connectRaw(host: string, port: number): Promise<'closed' | 'refused'> {
  return new Promise((resolve) => {
    const socket = connectSocket(port, host);
    socket.setTimeout(5000, () => socket.destroy());
    socket.on('error', (error: NodeJS.ErrnoException) => resolve(error.code === 'ECONNREFUSED' ? 'refused' : 'closed'));
    socket.on('close', () => resolve('closed'));
  });
}

test('serve() takes the socket bound ahead for the same host and any port; what connected before was cut', async () => {
  const port = await listenAhead('127.0.0.1');
  assert.is(await connectRaw('127.0.0.1', port), 'closed');
  const server = await serve('listener-ahead', { ping: () => 'pong' }, { daemon: false });
  servers.push(server);
  assert.is(server.address, `127.0.0.1:${port}`);
  const client = await connect<{ ping(): string }>({ host: '127.0.0.1', port });
  assert.is(await client.ping(), 'pong');
  await client.close();
});

test('a server that asks for another host binds its own, and the socket bound ahead is closed', async () => {
  const port = await listenAhead('127.0.0.1');
  const server = await serve('listener-elsewhere', { ping: () => 'pong' }, { daemon: false, host: '127.0.0.2' });
  servers.push(server);
  assert.match(server.address, /^127\.0\.0\.2:\d+$/);
  assert.is(await connectRaw('127.0.0.1', port), 'refused');
});

test('binding ahead on an address this host lacks fails, and serve() binds its own as before', async () => {
  // 192.0.2.0/24 is reserved for documentation: no host has it.
  const failed = await listenAhead('192.0.2.1').then(() => undefined, (error: NodeJS.ErrnoException) => error.code);
  assert.is(failed, 'EADDRNOTAVAIL');
  const server = await serve('listener-unbound', { ping: () => 'pong' }, { daemon: false });
  servers.push(server);
  assert.match(server.address, /^127\.0\.0\.1:\d+$/);
});

test('a socket bound ahead does not keep its process alive', () => {
  const listener = join(__dirname, '..', 'runtime', 'listener.js');
  const result = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(listener)}).listenAhead('127.0.0.1').then((port) => console.log('bound ' + port))`], { encoding: 'utf8', timeout: 10_000 });
  assert.is(result.status, 0, result.stderr);
  assert.match(result.stdout, /^bound \d+\n$/);
});

test.run();
