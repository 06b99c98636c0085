// The daemon's name service: servers register through their control connection, clients look
// them up, and a server that exits or drops that connection is forgotten.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { join } from 'node:path';
import { formatAddress, loadKey, openDaemon, parseAddress, type DaemonLink } from '../runtime/daemonlink.js';
import { RpcmigError } from '../runtime/errors.js';
import { startDaemon } from '../daemon/daemon.js';
import { cleanEnv, startDaemonProcess, tempDir, writeKey, type DaemonProcess } from './helpers/daemon.js';
import { ROOT, start, startNode, stop } from './helpers/process.js';

const CALC = join(ROOT, 'dist', 'test', 'programs', 'calc-server.js');
const dir = tempDir();
const key = writeKey(dir);
let daemon: DaemonProcess;
let link: DaemonLink;

test.before(async () => {
  daemon = await startDaemonProcess(key.file, dir, { RPCMIG_PID_CHECK_MS: '100' });
  link = await openDaemon(daemon.address, loadKey(key.file));
});
test.after(async () => {
  link.close();
  await stop(daemon.pid);
});

function startCalc() {
  return startNode(CALC, { env: cleanEnv({ RPCMIG_DAEMON: daemon.address, RPCMIG_KEY_FILE: key.file }) });
}

function record(name: string, pid: number, address = '127.0.0.1:9') {
  return { name, pid, address, entry: '/srv/app/server.js', argv: ['--fast'], root: '/srv/app' };
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

/** Resolves true once `name` is unknown to the daemon (within 3 s). */
async function forgotten(name: string): Promise<boolean> {
  for (let round = 0; round < 60; round++) {
    const outcome = await link.call('lookup', [name]).then(() => 'known', (error: RpcmigError) => error.code);
    if (outcome === 'NO_SUCH_SERVER') return true;
    await new Promise((done) => setTimeout(done, 50));
  }
  return false;
}

test('addresses read as HOST, HOST:PORT, [IPv6]:PORT or a bare IPv6 address', () => {
  assert.equal(parseAddress('hostA'), { host: 'hostA', port: 4111 });
  assert.equal(parseAddress('hostA:99'), { host: 'hostA', port: 99 });
  assert.equal(parseAddress('[::1]:5'), { host: '::1', port: 5 });
  assert.equal(parseAddress('::1', 7), { host: '::1', port: 7 });
  assert.is(formatAddress({ host: '::1', port: 5 }), '[::1]:5');
  const bad = (text: string) => {
    try {
      parseAddress(text);
    } catch (error) {
      return (error as Error).message.replace(' (expected HOST, HOST:PORT or [IPv6]:PORT)', '');
    }
    throw new Error(`${text} was accepted`);
  };
  assert.is(bad('a:b:c'), 'bad address "a:b:c": an IPv6 address with a port needs brackets');
  assert.is(bad(':80'), 'bad address ":80": no host name');
  assert.is(bad('h:70000'), 'bad address "h:70000": port "70000" is not 0-65535');
  assert.is(bad('[x]:1'), 'bad address "[x]:1": x is not an IPv6 address');
});

test('a server registers when it starts; lookup and ls find it serving', async () => {
  const calc = await startCalc();
  const [address] = calc.ready;
  assert.equal(await link.call('lookup', ['calc']), { name: 'calc', address });
  assert.equal(await link.call('ls', []), { servers: [{ name: 'calc', pid: calc.pid, address, state: 'serving' }], forwards: [] });
  assert.match(daemon.stderr(), `rpcmig daemon: register calc pid ${calc.pid} at ${address}\n`);
  await stop(calc.pid);
  assert.ok(await forgotten('calc'));
});

test('a second live server of the same name is refused clearly, and the first keeps the name', async () => {
  const first = await startCalc();
  const second = await startCalc();
  const refusal = `the daemon at ${daemon.address} refused to register calc (a server named "calc" is already registered`;
  assert.ok(second.stderr().includes(refusal), second.stderr());
  assert.equal(await link.call('lookup', ['calc']), { name: 'calc', address: first.ready[0] });
  const error = await failure(link.call('register', [record('calc', process.pid)]));
  assert.is(error.code, 'NAME_TAKEN');
  assert.is(error.message, `a server named "calc" is already registered on the daemon at ${daemon.address} (pid ${first.pid} at ${first.ready[0]})`);
  await stop(second.pid);
  await stop(first.pid);
  assert.ok(await forgotten('calc'));
});

test('a server killed outright is unregistered', async () => {
  const calc = await startCalc();
  await stop(calc.pid, 'SIGKILL');
  assert.ok(await forgotten('calc'));
  assert.match(daemon.stderr(), `rpcmig daemon: unregister calc pid ${calc.pid} (control connection closed)\n`);
});

test('a registration ends when its control connection closes, though its process lives', async () => {
  const control = await openDaemon(daemon.address, loadKey(key.file));
  assert.equal(await control.call('register', [record('held', process.pid)]), { name: 'held', address: '127.0.0.1:9' });
  assert.equal(await link.call('lookup', ['held']), { name: 'held', address: '127.0.0.1:9' });
  control.close();
  await control.closed;
  assert.ok(await forgotten('held'));
  assert.match(daemon.stderr(), `rpcmig daemon: unregister held pid ${process.pid} (control connection closed)\n`);
});

test('a registration ends when its pid exits, though its connection stays open', async () => {
  const sleeper = await start(process.execPath, ['-e', "console.log('listening 127.0.0.1:9'); setInterval(() => {}, 1000)"]);
  const control = await openDaemon(daemon.address, loadKey(key.file));
  await control.call('register', [record('orphan', sleeper.pid)]);
  await stop(sleeper.pid, 'SIGKILL');
  assert.ok(await forgotten('orphan'));
  assert.match(daemon.stderr(), `rpcmig daemon: unregister orphan pid ${sleeper.pid} (pid ${sleeper.pid} exited)\n`);
  control.close();
});

test('an unknown name is NO_SUCH_SERVER naming the daemon', async () => {
  const error = await failure(link.call('lookup', ['nobody']));
  assert.is(error.code, 'NO_SUCH_SERVER');
  assert.is(error.message, `no server named "nobody" on the daemon at ${daemon.address}`);
});

test('unknown methods and malformed registrations are refused, and the connection goes on', async () => {
  const unknown = await failure(link.call('launch', []));
  assert.is(unknown.code, 'NO_SUCH_METHOD');
  assert.is(unknown.message, 'the daemon has no method "launch"');
  const cases: Array<[unknown, string]> = [
    ['calc', 'register takes one map: { name, pid, address, entry, argv, root }'],
    [{ ...record('../etc', 1) }, `a server name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit; got "../etc"`],
    [{ ...record('ok', 1), pid: -4 }, 'pid must be a positive integer; got -4'],
    [{ ...record('ok', 1), address: '127.0.0.1' }, 'address 127.0.0.1 names no port'],
    [{ ...record('ok', 1), argv: [1] }, 'argv must be an array of strings'],
  ];
  for (const [param, message] of cases) {
    const error = await failure(link.call('register', [param]));
    assert.is(error.code, 'BAD_REQUEST');
    assert.is(error.message, message);
  }
  assert.equal(await link.call('ls', []), { servers: [], forwards: [] });
});

test('a server listening on every interface is found at the daemon advertised host', async () => {
  const lines: string[] = [];
  const inProcess = await startDaemon({
    listen: { host: '127.0.0.1', port: 0 },
    advertise: { host: '10.1.2.3', port: 4111 },
    dir: join(dir, 'spool-2'),
    key: loadKey(key.file),
    log: (line) => lines.push(line),
  });
  const control = await openDaemon({ host: '127.0.0.1', port: inProcess.address.port }, loadKey(key.file));
  await control.call('register', [record('wide', process.pid, '0.0.0.0:5000')]);
  assert.equal(await control.call('lookup', ['wide']), { name: 'wide', address: '10.1.2.3:5000' });
  assert.equal(lines, [`register wide pid ${process.pid} at 0.0.0.0:5000`]);
  control.close();
  await inProcess.close();
});

test.run();
