// serve() and the local daemon: a server registers when a daemon answers and is then found
// by name; without a key, without a daemon, or with the wrong key it serves alone and says so
// on one line of its log.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { join } from 'node:path';
import { connect, RpcmigError } from '../runtime/index.js';
import type { calc } from './programs/calc-server.js';
import { cleanEnv, startDaemonProcess, tempDir, writeKey, type DaemonProcess } from './helpers/daemon.js';
import { startNode, stop, stopAll } from './helpers/process.js';

const CALC = join(__dirname, 'programs', 'calc-server.js');
const dir = tempDir();
const key = writeKey(dir);
let daemon: DaemonProcess;

test.before(async () => {
  daemon = await startDaemonProcess(key.file, dir);
});

test.after(async () => {
  await stopAll();
});

function hostPort(address: string): { host: string; port: number } {
  const colon = address.lastIndexOf(':');
  return { host: address.slice(0, colon), port: Number(address.slice(colon + 1)) };
}

/** Starts the calc server with `env`; checks it serves, and returns its log lines. */
async function serveAlone(env: NodeJS.ProcessEnv): Promise<string[]> {
  const child = await startNode(CALC, { env: cleanEnv(env) });
  const client = await connect<typeof calc>(hostPort(child.ready[0]));
  assert.is(await client.add(2, 2), 4);
  await client.close();
  await stop(child.pid);
  return child.stderr().split('\n').filter(Boolean);
}

test('with no key a server serves alone and says why on one line', async () => {
  const lines = await serveAlone({ RPCMIG_DAEMON: daemon.address });
  assert.is(lines.length, 1, lines.join('\n'));
  assert.match(lines[0], /^rpcmig: no cluster key: .*; calc serves alone and cannot migrate$/);
});

test('with no daemon a server serves alone and says why on one line', async () => {
  const lines = await serveAlone({ RPCMIG_DAEMON: '127.0.0.1:1', RPCMIG_KEY_FILE: key.file });
  assert.equal(lines, ['rpcmig: no daemon at 127.0.0.1:1 (connection refused); calc serves alone and cannot migrate']);
});

test('with the wrong key a server serves alone, logs one line, and never logs the key', async () => {
  const wrong = writeKey(dir, 'wrong.key');
  const lines = await serveAlone({ RPCMIG_DAEMON: daemon.address, RPCMIG_KEY_FILE: wrong.file });
  assert.is(lines.length, 1, lines.join('\n'));
  assert.match(lines[0], /^rpcmig: .*; calc serves alone and cannot migrate$/);
  assert.not.match(lines.join('\n'), wrong.hex);
});

test('a server registers with its daemon, is found by name, and is forgotten when it dies', async () => {
  const env = cleanEnv({ RPCMIG_DAEMON: daemon.address, RPCMIG_KEY_FILE: key.file });
  const child = await startNode(CALC, { env });
  const options = { daemon: daemon.address, keyFile: key.file };
  const client = await connect<typeof calc>('calc', options);
  assert.is(await client.pid(), child.pid);
  assert.is(child.stderr(), '');
  await client.close();
  await stop(child.pid, 'SIGKILL');
  let code = '';
  for (let attempt = 0; attempt < 50 && code !== 'NO_SUCH_SERVER'; attempt++) {
    code = await connect('calc', options).then(
      (stale) => (void stale.close(), 'found'),
      (error: RpcmigError) => error.code,
    );
    if (code !== 'NO_SUCH_SERVER') await new Promise((done) => setTimeout(done, 100));
  }
  assert.is(code, 'NO_SUCH_SERVER');
});

test.run();
