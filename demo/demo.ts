// `npm start`: the paper's experiment on one machine. Two daemons on loopback stand for two
// hosts; the rdict server starts on the first; a client inserts and looks up words throughout
// while rdict moves to the second host and back; each move prints its timing table beside the
// paper's figures. Everything it starts, it ends by pid; it removes its directory.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { connect } from '../runtime/index.js';

const ROOT = resolve(__dirname, '..', '..');
const CLI = join(ROOT, 'dist', 'daemon', 'cli.js');
const RDICT = join(ROOT, 'fixtures', 'dist', 'rdict', 'server.js');
const WORDS = 1000;

interface Rdict {
  insert(word: string, meaning: string): boolean;
  lookup(word: string): string | null;
  stats(): { words: number; lookups: number };
}

const dir = mkdtempSync(join(tmpdir(), 'rpcmig-demo-'));
const keyFile = join(dir, 'cluster.key');
const env = { ...process.env, RPCMIG_KEY_FILE: keyFile };
const children: ChildProcess[] = [];
const pids = new Set<number>();

/** Starts a process and resolves with the first match of `ready` in its stdout. */
function start(args: string[], ready: RegExp, extraEnv: Record<string, string> = {}): Promise<string> {
  const child = spawn(process.execPath, args, { cwd: join(ROOT, 'fixtures'), env: { ...env, ...extraEnv }, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let out = '';
  let err = '';
  child.stderr!.on('data', (chunk: Buffer) => (err += chunk));
  return new Promise((done, fail) => {
    const timer = setTimeout(() => fail(new Error(`${args.join(' ')}: not ready in 10 s\n${err}`)), 10_000);
    child.stdout!.on('data', (chunk: Buffer) => {
      out += chunk;
      const match = ready.exec(out);
      if (match) {
        clearTimeout(timer);
        done(match[1]);
      }
    });
    child.once('exit', (code) => fail(new Error(`${args.join(' ')} exited (${code})\n${err}`)));
  });
}

/** `rpcmig ...args`, its stdout; throws with its stderr on failure. */
function rpcmig(args: string[]): Promise<string> {
  const child = spawn(process.execPath, [CLI, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (chunk: Buffer) => (out += chunk));
  child.stderr.on('data', (chunk: Buffer) => (err += chunk));
  return new Promise((done, fail) => child.once('exit', (code) => (code === 0 ? done(out) : fail(new Error(`rpcmig ${args[0]}: ${err}`)))));
}

async function main(): Promise<void> {
  writeFileSync(keyFile, randomBytes(32).toString('hex') + '\n', { mode: 0o600 });
  const daemon = (name: string) => start([CLI, 'daemon', '--listen', '127.0.0.1:0', '--dir', join(dir, name)], /listening on (\S+) /);
  const [hostA, hostB] = await Promise.all([daemon('hostA'), daemon('hostB')]);
  console.log(`two hosts: daemon A at ${hostA}, daemon B at ${hostB}`);
  console.log(`rdict (fixtures/rdict, the paper's dictionary server) at ${await start([RDICT], /listening (\S+)/, { RPCMIG_DAEMON: hostA })} on host A\n`);

  const dict = await connect<Rdict>('rdict', { daemon: hostA, keyFile });
  for (let i = 0; i < WORDS; i++) await dict.insert(`word${i}`, `meaning of word ${i}`);
  console.log(`client: inserted ${WORDS} words; now looking them up without pause while rdict moves\n`);

  let running = true;
  let lookups = 0;
  let wrong = 0;
  let slowest = 0;
  const client = (async () => {
    for (let i = 0; running && i < 10_000_000; i++) {
      const word = i % WORDS;
      const sent = performance.now();
      if ((await dict.lookup(`word${word}`)) !== `meaning of word ${word}`) wrong++;
      slowest = Math.max(slowest, performance.now() - sent);
      lookups++;
    }
  })();

  for (const [from, to, label] of [[hostA, hostB, 'A -> B'], [hostB, hostA, 'B -> A']]) {
    await new Promise((done) => setTimeout(done, 300));
    console.log(`$ rpcmig migrate rdict --daemon ${from} --to ${to}   (${label})`);
    console.log(await rpcmig(['migrate', 'rdict', '--daemon', from, '--to', to, '--grace', '1']));
  }
  await new Promise((done) => setTimeout(done, 300));
  running = false;
  await client;
  const stats = await dict.stats();
  await dict.close();
  console.log(`client: ${lookups} lookups during the moves, ${wrong} wrong answers, 0 errors; slowest call ${slowest.toFixed(1)} ms`);
  console.log(`rdict after two moves: ${stats.words} words, ${stats.lookups} lookups counted (state kept by @migrate)`);
  if (wrong > 0 || stats.words !== WORDS || stats.lookups !== lookups) throw new Error('the state did not survive the moves intact');
  for (const host of [hostA, hostB]) {
    const listing = JSON.parse(await rpcmig(['ls', '--daemon', host, '--json'])) as { servers: Array<{ pid: number }> };
    for (const server of listing.servers) pids.add(server.pid);
  }
}

function cleanUp(): void {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      // already gone
    }
  }
  for (const child of children) if (child.exitCode === null) child.kill('SIGTERM');
  rmSync(dir, { recursive: true, force: true });
}

main().then(
  () => {
    cleanUp();
    console.log('\ndemo done: both daemons and every server stopped.');
  },
  (error: Error) => {
    cleanUp();
    console.error(`demo failed: ${error.message}`);
    process.exitCode = 1;
  },
);
