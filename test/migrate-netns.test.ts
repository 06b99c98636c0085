// Migration between hosts with their own addresses (network namespaces on a bridge): a counter
// moves A->B->C->A while clients on a fourth host keep incrementing it; each increment they
// were told about is counted once, and the server ends where it started, with its state.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { join } from 'node:path';
import { COUNTER } from './helpers/cluster.js';
import { CLI, tempDir, writeKey } from './helpers/daemon.js';
import { createHosts, firstMatch, requireNetns, setUpOnce, type Hosts } from './helpers/netns.js';
import { ROOT } from './helpers/process.js';

const CLIENT = join(ROOT, 'dist', 'test', 'programs', 'counter-client.js');
const dir = tempDir();
const key = writeKey(dir);
const env = { ...process.env, RPCMIG_KEY_FILE: key.file };
let lab: Hosts;

const daemonOf = (host: string) => `${lab.host(host).address}:4111`;

setUpOnce(test, async () => {
  requireNetns();
  lab = await createHosts(['a', 'b', 'c', 'd']);
  for (const host of ['a', 'b', 'c']) {
    const args = [CLI, 'daemon', '--listen', daemonOf(host), '--dir', join(dir, host), '--key-file', key.file];
    await firstMatch(lab.exec(host, process.execPath, args, { env, stdio: ['ignore', 'pipe', 'ignore'] }), /listening on (\S+)/, 10_000);
  }
  const serverEnv = { ...env, RPCMIG_DAEMON: daemonOf('a'), RPCMIG_HOST: lab.host('a').address };
  const server = lab.exec('a', process.execPath, [COUNTER, '--name', 'counter'], { env: serverEnv, cwd: join(ROOT, 'fixtures'), stdio: ['ignore', 'pipe', 'ignore'] });
  await firstMatch(server, /listening (\S+)/, 10_000);
}, async () => {
  await lab?.destroy();
});

test('A->B->C->A with clients on host D: every acknowledged increment counted once, none lost', async () => {
  const client = lab.run('d', process.execPath, [CLIENT, 'counter', daemonOf('a'), key.file, '4000', '4'], { timeoutMs: 30_000 });
  const hops = [['a', 'b'], ['b', 'c'], ['c', 'a']];
  for (const [from, to] of hops) {
    await new Promise((resolve) => setTimeout(resolve, 600));
    const result = await lab.run('d', process.execPath, [CLI, 'migrate', 'counter', '--daemon', daemonOf(from), '--to', daemonOf(to), '--grace', '1', '--json', '--key-file', key.file], { timeoutMs: 30_000 });
    assert.is(result.code, 0, `${from} -> ${to}: ${result.stderr}`);
    const figures = JSON.parse(result.stdout) as { to: string; address: string };
    assert.is(figures.to, daemonOf(to));
    assert.ok(figures.address.startsWith(`${lab.host(to).address}:`), `the server listens on host ${to}: ${figures.address}`);
  }
  const outcome = await client;
  assert.is(outcome.code, 0, outcome.stdout + outcome.stderr);
  const { acknowledged, errors, final } = JSON.parse(outcome.stdout) as { acknowledged: number; errors: string[]; final: number };
  assert.equal(errors, []);
  assert.ok(acknowledged > 500, `only ${acknowledged} increments`);
  assert.is(final, acknowledged);
  const listing = await lab.run('d', process.execPath, [CLI, 'ls', '--daemon', daemonOf('a'), '--json', '--key-file', key.file]);
  const servers = (JSON.parse(listing.stdout) as { servers: Array<{ name: string; state: string; address: string }> }).servers;
  assert.ok(servers.some((s) => s.name === 'counter' && s.state === 'serving' && s.address.startsWith(lab.host('a').address)), listing.stdout);
});

test.run();
