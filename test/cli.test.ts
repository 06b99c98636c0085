// The `rpcmig` command line (DESIGN §4), run as a user runs it: exact stdout, stderr and exit
// code for help, usage errors, keygen, daemon start-up, ls, call and every failure of call.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { chmodSync, readFileSync, statSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { loadKey, openDaemon, type DaemonLink } from '../runtime/daemonlink.js';
import { JSON_RULE, toJson } from '../daemon/output.js';
import { USAGE } from '../daemon/usage.js';
import { cleanEnv, runCli, startDaemonProcess, tempDir, writeKey, type DaemonProcess } from './helpers/daemon.js';
import { ROOT, startNode, stop, type Started } from './helpers/process.js';

const dir = tempDir();
const key = writeKey(dir);
const wrong = writeKey(dir, 'wrong.key');
let daemon: DaemonProcess;
let calc: Started;
let link: DaemonLink;
let closedPort: number;

const env = () => ({ RPCMIG_KEY_FILE: key.file, RPCMIG_DAEMON: daemon.address });

test.before(async () => {
  daemon = await startDaemonProcess(key.file, dir);
  calc = await startNode(join(ROOT, 'dist', 'test', 'programs', 'calc-server.js'), { env: cleanEnv(env()) });
  link = await openDaemon(daemon.address, loadKey(key.file));
  const probe = createServer();
  await new Promise<void>((done) => probe.listen(0, '127.0.0.1', done));
  closedPort = (probe.address() as AddressInfo).port;
  await new Promise((done) => probe.close(done));
});
test.after(async () => {
  link.close();
  await stop(calc.pid);
  await stop(daemon.pid);
});

function expect(args: string[], code: number, stdout: string, stderr: string, extraEnv: NodeJS.ProcessEnv = env()): void {
  const result = runCli(args, extraEnv);
  assert.equal(result, { code, stdout, stderr }, `rpcmig ${args.join(' ')}`);
}

test('--help prints the usage with every exit code; COMMAND --help prints its own', () => {
  expect(['--help'], 0, USAGE[''], '');
  const codes = USAGE[''].split('\n').filter((line) => /^ {2}\d {2}\S/.test(line));
  assert.equal(codes.map((line) => line.trim()[0]), ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']);
  expect(['migrate', '--help'], 0, USAGE.migrate, '');
  expect(['ls', '--help'], 0, USAGE.ls, '');
  expect(['keygen', '-h'], 0, USAGE.keygen, '');
  expect(['call', '--help'], 0, `${USAGE.call}\n${JSON_RULE}\n`, '');
});

test('an unknown command, no command, an unknown flag or missing arguments print usage and exit 2', () => {
  expect(['frobnicate'], 2, '', `rpcmig: unknown command "frobnicate"\n\n${USAGE['']}`);
  expect([], 2, '', `rpcmig: no command given\n\n${USAGE['']}`);
  expect(['migrate', 'calc'], 2, '', `rpcmig migrate: migrate needs --to HOST[:PORT], the destination daemon\n\n${USAGE.migrate}`);
  expect(['migrate', '--to', '127.0.0.1:1'], 2, '', `rpcmig migrate: migrate takes one NAME\n\n${USAGE.migrate}`);
  expect(['migrate', 'calc', '--to', 'h:1', '--grace', 'soon'], 2, '', `rpcmig migrate: --grace takes seconds >= 0; got "soon"\n\n${USAGE.migrate}`);
  expect(['ls', '--bogus'], 2, '', `rpcmig ls: Unknown option '--bogus'\n\n${USAGE.ls}`);
  expect(['keygen'], 2, '', `rpcmig keygen: keygen takes one FILE\n\n${USAGE.keygen}`);
  expect(['call', 'calc'], 2, '', `rpcmig call: call needs NAME and PROC\n\n${USAGE.call}\n${JSON_RULE}\n`);
  const badArg = `rpcmig call: argument 2 is not JSON: apple (a string needs quotes: '"apple"')\n\n${USAGE.call}\n${JSON_RULE}\n`;
  expect(['call', 'calc', 'add', '1', 'apple'], 2, '', badArg);
  const badPort = `rpcmig ls: --daemon: bad address "127.0.0.1:99999": port "99999" is not 0-65535 (expected HOST, HOST:PORT or [IPv6]:PORT)\n\n${USAGE.ls}`;
  expect(['ls', '--daemon', '127.0.0.1:99999'], 2, '', badPort);
});

test('keygen writes a 32-byte hex key, mode 0600, and replaces a file only with --force', () => {
  const file = join(dir, 'new.key');
  expect(['keygen', file], 0, `wrote a new cluster key to ${file} (mode 0600); copy it to every host\n`, '');
  assert.is(statSync(file).mode & 0o777, 0o600);
  const first = readFileSync(file, 'utf8');
  assert.match(first, /^[0-9a-f]{64}\n$/);
  expect(['keygen', file], 1, '', `rpcmig keygen: ${file} already exists; pass --force to replace it\n`);
  chmodSync(file, 0o644);
  expect(['keygen', file, '--force'], 0, `wrote a new cluster key to ${file} (mode 0600); copy it to every host\n`, '');
  assert.is(statSync(file).mode & 0o777, 0o600);
  assert.is.not(readFileSync(file, 'utf8'), first);
});

test('the daemon refuses to start without a usable key (exit 4) and stops on SIGTERM (exit 0)', async () => {
  const args = ['daemon', '--listen', '127.0.0.1:0', '--dir', join(dir, 'spool-cli')];
  expect(args, 4, '', 'rpcmig daemon: AUTH_FAILED: no cluster key: pass --key-file FILE or set RPCMIG_KEY_FILE (rpcmig keygen FILE writes one)\n', {});
  const open = writeKey(dir, 'open.key');
  chmodSync(open.file, 0o640);
  const refusal = `rpcmig daemon: AUTH_FAILED: the key file ${open.file} is accessible by group or others (mode 0640); chmod 600 it\n`;
  expect([...args, '--key-file', open.file], 4, '', refusal, {});
  const second = await startDaemonProcess(key.file, join(dir, 'second'));
  await stop(second.pid);
  assert.equal(await second.exited, { code: 0, signal: null });
  assert.is(second.stdout(), `rpcmig daemon listening on ${second.address} (spool ${join(dir, 'second', 'spool')})\n`);
  assert.is(second.stderr(), 'rpcmig daemon: stopping (SIGTERM)\n');
});

test('ls prints the registered servers as a table, or as the contract JSON with --json', () => {
  const [address] = calc.ready;
  const json = JSON.stringify({ servers: [{ name: 'calc', pid: calc.pid, address, state: 'serving' }], forwards: [] });
  expect(['ls', '--json'], 0, json + '\n', '');
  const pid = String(calc.pid);
  const width = Math.max(3, pid.length);
  const table = `NAME  ${'PID'.padEnd(width)}  ${'ADDRESS'.padEnd(address.length)}  STATE\ncalc  ${pid.padEnd(width)}  ${address}  serving\n`;
  expect(['ls', '--daemon', daemon.address, '--key-file', key.file], 0, table, '', {});
});

test('call prints the result as JSON: indented, or on one line with --json', () => {
  expect(['call', 'calc', 'add', '2', '3'], 0, '5\n', '');
  expect(['call', 'calc', 'echo', '{"a":[1,"x"]}'], 0, '{\n  "a": [\n    1,\n    "x"\n  ]\n}\n', '');
  expect(['call', 'calc', 'echo', '{"a":[1,"x"]}', '--json'], 0, '{"a":[1,"x"]}\n', '');
  expect(['call', 'calc', 'add', '--', '-2', '-3'], 0, '-5\n', '');
});

test('call failures have distinct exit codes and say what failed', async () => {
  const noDaemon = `127.0.0.1:${closedPort}`;
  expect(['call', 'calc', 'add', '1', '2', '--daemon', noDaemon], 3, '', `rpcmig call: NO_DAEMON: no daemon at ${noDaemon} (connection refused)\n`);
  expect(['ls', '--key-file', wrong.file], 4, '', `rpcmig ls: AUTH_FAILED: the daemon at ${daemon.address} refused the key\n`);
  const noKey = 'rpcmig call: AUTH_FAILED: no cluster key: pass --key-file FILE or set RPCMIG_KEY_FILE (rpcmig keygen FILE writes one)\n';
  expect(['call', 'calc', 'add', '1', '2'], 4, '', noKey, { RPCMIG_DAEMON: daemon.address });
  expect(['call', 'nobody', 'f'], 5, '', `rpcmig call: NO_SUCH_SERVER: no server named "nobody" on the daemon at ${daemon.address}\n`);
  const noMethod = runCli(['call', 'calc', 'nosuch'], env());
  assert.is(noMethod.code, 6);
  assert.is(noMethod.stdout, '');
  assert.match(noMethod.stderr, /^rpcmig call: NO_SUCH_METHOD: .*nosuch.*\n$/);
  expect(['call', 'calc', 'fail', '"boom"'], 7, '', 'rpcmig call: APP_ERROR: boom\n');
  const control = await openDaemon(daemon.address, loadKey(key.file));
  const ghost = { name: 'ghost', pid: process.pid, address: noDaemon, entry: '/x.js', argv: [], root: '/' };
  await control.call('register', [ghost]);
  const gone = runCli(['call', 'ghost', 'f'], env());
  assert.is(gone.code, 8);
  assert.match(gone.stderr, new RegExp(`^rpcmig call: CONNECTION_FAILED: .*${noDaemon}.*\n$`));
  control.close();
});

test('results JSON cannot hold print by one rule', () => {
  const value = {
    big: 2n ** 70n,
    map: new Map([['a', 1]]),
    pairs: new Map<unknown, unknown>([[1, 'one']]),
    set: new Set([1, 2]),
    bytes: Buffer.from([1, 2]),
    floats: new Float32Array([0.5]),
    when: new Date(0),
    pattern: /a+/g,
    list: [undefined],
    gone: undefined,
  };
  const expected = '{"big":"1180591620717411303424","map":{"a":1},"pairs":[[1,"one"]],"set":[1,2],"bytes":[1,2],'
    + '"floats":[0.5],"when":"1970-01-01T00:00:00.000Z","pattern":"/a+/g","list":[null]}';
  assert.is(toJson(value, true), expected);
  assert.is(toJson(undefined, true), 'null');
  assert.is(toJson(new BigInt64Array([5n]), true), '["5"]');
});

test('the cluster key never appears in any output', () => {
  assert.not.ok((daemon.stdout() + daemon.stderr()).includes(key.hex));
});

test.run();
