// Daemons and the CLI for tests: key files, a daemon process on port 0 (through the one
// spawner in process.ts), the CLI run to completion, and a raw peer of the daemon port.
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, start, type Started } from './process.js';

export const CLI = join(ROOT, 'dist', 'daemon', 'cli.js');

const made: string[] = [];

/** A fresh directory, removed with everything in it when the test process exits. */
export function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'rpcmig-daemon-test-'));
  if (made.push(dir) === 1) process.once('exit', () => made.forEach((path) => rmSync(path, { recursive: true, force: true })));
  return dir;
}

/** Writes a fresh key file; returns its path and the key's hex (to check it never leaks). */
export function writeKey(dir: string, name = 'cluster.key', mode = 0o600): { file: string; hex: string } {
  const hex = randomBytes(32).toString('hex');
  const file = join(dir, name);
  writeFileSync(file, hex + '\n', { mode });
  return { file, hex };
}

/** The environment without any rpcmig variable, plus `extra`. */
export function cleanEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('RPCMIG_')));
  return { ...env, ...extra };
}

export interface DaemonProcess extends Started {
  /** The address the daemon printed in its listening line. */
  readonly address: string;
  readonly spool: string;
}

// Blank files a daemon of the tests keeps unless `options` say otherwise: more than a fixture
// program has files, so that first moves write blanks and their refill runs; the default
// (2,048) would have every daemon of the suite create that many files.
const TEST_BLANKS = ['--blanks', '48'];

/** Starts `rpcmig daemon --listen 127.0.0.1:0` (or `listen`) with the spool `dir/spool`, and waits for its listening line. */
export async function startDaemonProcess(keyFile: string, dir: string, env: NodeJS.ProcessEnv = {}, listen = '127.0.0.1:0', options: string[] = []): Promise<DaemonProcess> {
  const spool = join(dir, 'spool');
  const blanks = options.includes('--blanks') ? [] : TEST_BLANKS;
  const args = [CLI, 'daemon', '--listen', listen, '--dir', spool, '--key-file', keyFile, ...blanks, ...options];
  const started = await start(process.execPath, args, { env: cleanEnv(env), ready: /^rpcmig daemon listening on (\S+:\d+) /m });
  return { ...started, address: started.ready[0], spool };
}

/** The blank files the daemon has ready (`--blanks`). */
export function blanksOf(daemon: DaemonProcess): number {
  return readdirSync(join(daemon.spool, 'blobs', 'blank')).length;
}

/** The blank directories the daemon's store keeps ready (see blanks.ts). */
export function blankDirsOf(daemon: DaemonProcess): number {
  return readdirSync(join(daemon.spool, 'blobs', 'blank-dirs')).length;
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs `rpcmig ...args` to completion (at most 15 s). Blocking is fine: every daemon and
 * server it talks to is another process.
 */
export function runCli(args: string[], env: NodeJS.ProcessEnv = {}): CliResult {
  const result = spawnSync(process.execPath, [CLI, ...args], { cwd: ROOT, env: cleanEnv(env), encoding: 'utf8', timeout: 15_000 });
  if (result.error) throw result.error;
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

export interface RawExchange {
  /** Every byte the daemon sent before it closed the connection. */
  received: Buffer;
  /** The local port of the connection, as the daemon logs it. */
  port: number;
  /** True when the daemon closed the connection within the wait. */
  closed: boolean;
}

/**
 * Connects to the daemon port, sends `bytes` (or nothing) once the daemon's hello arrived,
 * and collects what comes back until the daemon closes the connection or `wait` ms pass.
 */
export function rawExchange(address: string, bytes: Buffer | undefined, wait = 3000): Promise<RawExchange> {
  const colon = address.lastIndexOf(':');
  const socket = connect({ host: address.slice(0, colon), port: Number(address.slice(colon + 1)) });
  const chunks: Buffer[] = [];
  let sent = false;
  let port = 0;
  socket.once('connect', () => (port = socket.localPort ?? 0));
  socket.on('error', () => undefined);
  socket.on('data', (chunk: Buffer) => {
    chunks.push(chunk);
    if (!sent && bytes) socket.write(bytes);
    sent = true;
  });
  return new Promise((resolve) => {
    const finish = (closed: boolean) => {
      clearTimeout(timer);
      socket.destroy();
      resolve({ received: Buffer.concat(chunks), port, closed });
    };
    const timer = setTimeout(() => finish(false), wait);
    socket.once('close', () => finish(true));
  });
}

/** The daemon's log lines that mention a peer port. */
export function linesAbout(stderr: string, port: number): string[] {
  return stderr.split('\n').filter((line) => line.includes(`:${port}:`) || line.endsWith(`:${port}`));
}
