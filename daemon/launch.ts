// Starting a moved server (DESIGN §3 step 5): the one place the daemon spawns a process. The
// server runs detached from the daemon (a daemon restart must not take its servers along),
// with its output in a log file under the spool and RPCMIG_RESTORE naming its state file.
import { spawn } from 'node:child_process';
import type { Writable } from 'node:stream';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

export interface Launch {
  /** The materialised program root; `entry` and `cwd` are relative to it. */
  program: string;
  entry: string;
  argv: string[];
  cwd: string;
  execArgv: string[];
  /** Variables added to the daemon's own environment. */
  env: Record<string, string>;
  log: string;
  /** Standard input a pipe from the daemon (`Launched.stdin`): how a standby is told to go on. */
  pipe?: boolean;
}

export interface Launched {
  pid: number;
  /** With `pipe`: the write end of the process's standard input. */
  stdin?: Writable;
  /** Resolves with a description of how the process ended. */
  exited: Promise<string>;
}

export function launch(spec: Launch): Launched {
  const out = openSync(spec.log, 'a', 0o600);
  try {
    const child = spawn(process.execPath, [...spec.execArgv, join(spec.program, spec.entry), ...spec.argv], {
      cwd: join(spec.program, spec.cwd),
      env: { ...process.env, ...spec.env },
      detached: true,
      stdio: [spec.pipe ? 'pipe' : 'ignore', out, out],
    });
    const exited = new Promise<string>((resolve) => {
      child.once('error', (error) => resolve(`could not start: ${error.message}`));
      child.once('exit', (code, signal) => resolve(signal ? `killed by ${signal}` : `exited with code ${code}`));
    });
    child.unref();
    if (child.pid === undefined) throw new Error(`cannot start ${spec.entry}`);
    // The pipe must not keep the daemon alive, nor a write to a process that died end it.
    (child.stdin as (Writable & { unref?(): void }) | null)?.unref?.();
    child.stdin?.on('error', () => undefined);
    return { pid: child.pid, exited, stdin: child.stdin ?? undefined };
  } finally {
    closeSync(out);
  }
}

const STACK_FRAME = /^\s+at /;

/**
 * The last lines of a log, to say why a server did not start. Stack frames are left out: an
 * uncaught error's frames would push its message out of the lines shown.
 */
export function tail(log: string, lines = 8): string {
  try {
    return readFileSync(log, 'utf8').trimEnd().split('\n').filter((line) => !STACK_FRAME.test(line)).slice(-lines).join('\n');
  } catch {
    return '';
  }
}

/**
 * Ends a process this daemon started, found again by pid after a restart: only if its
 * environment still names `name=value`, so that a pid reused by another process is never hit.
 * True when it was ended.
 */
export function end(pid: number, name: string, value: string): boolean {
  let environ: string;
  try {
    environ = readFileSync(`/proc/${pid}/environ`, 'latin1');
  } catch {
    return false;
  }
  if (!environ.split('\0').includes(`${name}=${value}`)) return false;
  try {
    process.kill(pid, 'SIGKILL');
    return true;
  } catch {
    return false;
  }
}
