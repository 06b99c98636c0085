// The paper's server and client (fixtures/rdict): the client's commands from standard input,
// answered by the server found through the daemon, before and after the server moved.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { breakdown, Cluster, FIXTURES, RDICT } from './helpers/cluster.js';
import { cleanEnv, type DaemonProcess } from './helpers/daemon.js';
import { ROOT } from './helpers/process.js';

const CLIENT = join(FIXTURES, 'rdict', 'client.js');
const cluster = new Cluster();
let a: DaemonProcess;

test.before(async () => {
  a = await cluster.daemon();
  await cluster.server(RDICT, a);
});
test.after(() => cluster.close());

/** Runs the client with `input` on its standard input; its stdout once it exits (at most 15 s). */
function client(input: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const env = cleanEnv({ RPCMIG_DAEMON: a.address, RPCMIG_KEY_FILE: cluster.key.file });
  const child = spawn(process.execPath, [CLIENT], { cwd: join(ROOT, 'fixtures'), env });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (text: string) => (stdout += text));
  child.stderr.setEncoding('utf8').on('data', (text: string) => (stderr += text));
  child.stdin.end(input);
  const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
  return new Promise((resolve) => child.once('close', (code) => {
    clearTimeout(timer);
    resolve({ code, stdout, stderr });
  }));
}

test('the client inserts, looks up, deletes and counts through the daemon', async () => {
  const result = await client('C\nI apple a round fruit\nI pear another fruit\nL apple\nD pear\nL pear\nX\nS\nQ\nL apple\n');
  assert.equal(result, {
    code: 0,
    stderr: '',
    stdout: [
      'initialised: true', 'insert apple: true', 'insert pear: true', 'apple: a round fruit', 'delete pear: true',
      'pear: (not found)', 'unknown command "X": use I, D, L, C, S or Q', '{"words":1,"lookups":2}', '',
    ].join('\n'),
  });
});

test('after rdict moved to another host, the same client finds its words there', async () => {
  const b = await cluster.daemon();
  breakdown(await cluster.migrate('rdict', a, b, ['--grace', '0.5']));
  const result = await client('L apple\nS\n');
  assert.equal(result, { code: 0, stderr: '', stdout: 'apple: a round fruit\n{"words":1,"lookups":3}\n' });
});

test.run();
