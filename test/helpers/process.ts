// Child processes for tests: the one place that spawns them, reads their "listening" line,
// and ends them, always by pid. Every wait is bounded; whatever a test forgets is ended when
// the test process exits.
import { spawn, type ChildProcess } from 'node:child_process';
import { resolve } from 'node:path';

export interface Started {
  readonly pid: number;
  /** The capture groups of the ready line (for the default pattern, [address]). */
  readonly ready: string[];
  /** Everything the child wrote so far. */
  stdout(): string;
  stderr(): string;
  /** Resolves when the child has exited. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export interface StartOptions {
  args?: string[];
  /** Node's own options, before the script. */
  nodeArgs?: string[];
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** A line on stdout that says the child is ready; default `listening HOST:PORT`. */
  ready?: RegExp;
  /** Milliseconds to wait for the ready line; default 10 s. */
  timeout?: number;
}

/** Root of the built package (dist/ lives under it). */
export const ROOT = resolve(__dirname, '..', '..', '..');

const running = new Map<number, ChildProcess>();

/** Starts `node script ...args` and waits for its ready line; rejects with its output if it dies first. */
export function startNode(script: string, options: StartOptions = {}): Promise<Started> {
  return start(process.execPath, [...(options.nodeArgs ?? []), script, ...(options.args ?? [])], options);
}

type Exit = { code: number | null; signal: NodeJS.Signals | null };

/** A spawned child, registered by pid, its output collected as it comes. */
interface Launched {
  child: ChildProcess;
  pid: number;
  out: string;
  err: string;
  exited: Promise<Exit>;
}

function launch(command: string, args: string[], options: StartOptions): Launched {
  const child = spawn(command, args, { cwd: options.cwd ?? ROOT, env: options.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
  if (child.pid === undefined) throw new Error(`cannot start ${command}`);
  const pid = child.pid;
  running.set(pid, child);
  const exited = new Promise<Exit>((done) => {
    child.once('exit', (code, signal) => {
      running.delete(pid);
      done({ code, signal });
    });
  });
  const launched: Launched = { child, pid, out: '', err: '', exited };
  child.stdout?.setEncoding('utf8').on('data', (text: string) => (launched.out += text));
  child.stderr?.setEncoding('utf8').on('data', (text: string) => (launched.err += text));
  return launched;
}

/** The ready line's capture groups; on time-out or early exit the child is stopped and its output reported. */
function readyLine(launched: Launched, pattern: RegExp, timeout: number, label: string): Promise<string[]> {
  const { child, pid } = launched;
  return new Promise((resolve, reject) => {
    const fail = (why: string) => {
      cleanup();
      void stop(pid).then(() => reject(new Error(`${label}: ${why}\nstdout: ${launched.out}\nstderr: ${launched.err}`)));
    };
    const timer = setTimeout(() => fail(`no line matching ${pattern} within ${timeout} ms`), timeout);
    const onData = () => {
      const match = pattern.exec(launched.out);
      if (!match) return;
      cleanup();
      resolve(match.slice(1));
    };
    const onExit = () => fail('exited before it was ready');
    const cleanup = () => {
      clearTimeout(timer);
      child.stdout?.off('data', onData);
      child.off('exit', onExit);
    };
    child.stdout?.on('data', onData);
    child.once('exit', onExit);
  });
}

/** Starts `command ...args` and waits for its ready line on stdout. */
export async function start(command: string, args: string[], options: StartOptions = {}): Promise<Started> {
  const launched = launch(command, args, options);
  const ready = await readyLine(launched, options.ready ?? /listening (\S+:\d+)/, options.timeout ?? 10_000, args.join(' '));
  return { pid: launched.pid, ready, stdout: () => launched.out, stderr: () => launched.err, exited: launched.exited };
}

/** Whether a process with this pid exists. */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Sends `signal` to the child `pid` and waits for it to exit; SIGKILL after `grace` ms. */
export async function stop(pid: number, signal: NodeJS.Signals = 'SIGTERM', grace = 3000): Promise<void> {
  const child = running.get(pid);
  if (!child) return;
  const exited = new Promise<void>((done) => child.once('exit', () => done()));
  try {
    process.kill(pid, signal);
  } catch {
    return;
  }
  const timer = setTimeout(() => isAlive(pid) && process.kill(pid, 'SIGKILL'), grace);
  await exited;
  clearTimeout(timer);
}

/** Ends every child still running (for a suite's `after` hook). */
export async function stopAll(): Promise<void> {
  await Promise.all([...running.keys()].map((pid) => stop(pid)));
}

/** Polls `check` every `interval` ms until it returns true; false after `timeout` ms. */
export async function waitFor(check: () => boolean, timeout = 5000, interval = 20): Promise<boolean> {
  const deadline = Date.now() + timeout;
  for (let round = 0; round < Math.ceil(timeout / interval) + 1; round++) {
    if (check()) return true;
    if (Date.now() >= deadline) break;
    await new Promise((done) => setTimeout(done, interval));
  }
  return check();
}

process.once('exit', () => {
  for (const pid of running.keys()) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
});
