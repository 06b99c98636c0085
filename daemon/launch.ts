// Starting a moved server (DESIGN §3 steps 2 and 5): the one place the daemon spawns a process.
// The server runs detached from the daemon (a daemon restart must not take its servers along),
// with its output in a log file under the spool and RPCMIG_RESTORE naming its state file. A
// standby starts in a spare, a Node process started before any move, when one is ready.
import { spawn } from 'node:child_process';
import type { Writable } from 'node:stream';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, openSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { stripVTControlCharacters } from 'node:util';
import { OPT_OUT } from './packages.js';

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
  return start([...spec.execArgv, join(spec.program, spec.entry), ...spec.argv], join(spec.program, spec.cwd), spec.env, spec.log, spec.pipe === true);
}

/** Spawns Node detached, its output appended to `log`. */
function start(args: string[], cwd: string, env: Record<string, string>, log: string, pipe: boolean): Launched {
  const out = openSync(log, 'a', 0o600);
  try {
    const child = spawn(process.execPath, args, { cwd, env: { ...process.env, ...env }, detached: true, stdio: [pipe ? 'pipe' : 'ignore', out, out] });
    const exited = new Promise<string>((resolve) => {
      child.once('error', (error) => resolve(`could not start: ${error.message}`));
      child.once('exit', (code, signal) => resolve(signal ? `killed by ${signal}` : `exited with code ${code}`));
    });
    child.unref();
    if (child.pid === undefined) throw new Error(`cannot start ${args.join(' ')}`);
    // The pipe must not keep the daemon alive, nor a write to a process that died end it.
    (child.stdin as (Writable & { unref?(): void }) | null)?.unref?.();
    child.stdin?.on('error', () => undefined);
    return { pid: child.pid, exited, stdin: child.stdin ?? undefined };
  } finally {
    closeSync(out);
  }
}

/** Spares a daemon keeps (`--spares`): a move to it takes one, and the next starts once that move has started. */
export const DEFAULT_SPARES = 1;
export const MAX_SPARES = 16;
/** Set in a spare's environment: the mark by which a process it became is found again (see `end`). */
export const SPARE_ENV = 'RPCMIG_SPARE';
/** A spare that ends within this long of its start failed to start: the next waits a while. */
const SPARE_FAILED_MS = 2000;
const SPARE_RETRY_MS = 5000;
/** After a spare was taken, the next starts once the move that took it is committed or over (`fill`), or this much later. */
const SPARE_REFILL_MS = 2000;
/** A spare that ended before it was taken is replaced this much later. */
const SPARE_REPLACE_MS = 300;

interface Spare extends Launched {
  token: string;
  log: string;
  started: number;
  /** The standby bootstrap it preloads. */
  preload?: string;
}

/**
 * Node processes started ahead of any move (see spare.ts), so that a move's standby does not
 * wait for Node's start-up, nor, for a program that arrived here before, for loading and
 * warming its runtime. `take` hands one a standby to run; another starts once that move no
 * longer needs the processor (`fill`).
 */
export class Spares {
  private readonly ready = new Set<Spare>();
  private refill?: NodeJS.Timeout;
  private closed = false;
  /** The standby bootstrap the next spares preload: that of the program that last arrived here. */
  private preload?: string;

  /** `env`: what the spares' environment holds besides the daemon's own (the servers' variables, which a job sets again). */
  constructor(private readonly options: { count: number; dir: string; env: Record<string, string>; log(line: string): void }) {}

  /** Starts spares until `count` are ready. */
  fill(): void {
    clearTimeout(this.refill);
    this.refill = undefined;
    if (this.closed) return;
    try {
      mkdirSync(this.options.dir, { recursive: true, mode: 0o700 });
      while (this.ready.size < this.options.count) this.spawn();
    } catch (error) {
      this.options.log(`could not start a spare: ${(error as Error).message}`);
    }
  }

  private spawn(): void {
    const token = randomBytes(8).toString('hex');
    const log = join(this.options.dir, `${token}.log`);
    const { preload } = this;
    const args = [SPARE_SCRIPT, ...(preload === undefined ? [] : [preload])];
    const spare: Spare = { ...start(args, this.options.dir, { ...this.options.env, [SPARE_ENV]: token }, log, true), token, log, started: performance.now(), preload };
    this.ready.add(spare);
    void spare.exited.then((how) => {
      // Taken, it is a standby now, and the move that took it watches it.
      if (!this.ready.delete(spare)) return;
      const said = tail(log, 2);
      rmSync(log, { force: true });
      if (this.closed) return;
      const failed = performance.now() - spare.started < SPARE_FAILED_MS;
      // One that could not preload its bootstrap: the next preloads none.
      if (failed && preload !== undefined && this.preload === preload) this.preload = undefined;
      this.options.log(`spare pid ${spare.pid} ${how}${said ? ` (${said.replace(/\n/g, '; ')})` : ''}${failed ? `; the next starts in ${SPARE_RETRY_MS} ms` : ''}`);
      this.later(failed ? SPARE_RETRY_MS : SPARE_REPLACE_MS);
    });
  }

  /**
   * A ready spare runs `spec` (a standby: no Node options, a pipe on its standard input),
   * its output going to `spec.log` from now on; undefined when none is ready.
   */
  take(spec: Launch, title: string): (Launched & { token: string }) | undefined {
    if (spec.execArgv.length > 0 || !spec.pipe) return undefined;
    const script = join(spec.program, spec.entry);
    this.preload = script;
    // One that preloads this very bootstrap, if any.
    const spare = [...this.ready].find((s) => s.preload === script) ?? this.ready.values().next().value;
    if (spare === undefined) return undefined;
    this.ready.delete(spare);
    try {
      renameSync(spare.log, spec.log);
    } catch {
      // the spare's output stays in its own log
    }
    const job: SpareJob = { script, argv: spec.argv, cwd: join(spec.program, spec.cwd), env: spec.env, title };
    spare.stdin!.write(`${JSON.stringify(job)}\n`);
    this.later(SPARE_REFILL_MS);
    return spare;
  }

  private later(ms: number): void {
    if (this.closed || this.refill) return;
    this.refill = setTimeout(() => this.fill(), ms).unref();
  }

  /** Ends the spares that were not taken. */
  close(): void {
    this.closed = true;
    clearTimeout(this.refill);
    for (const spare of this.ready) kill(spare.pid);
  }
}

/** What a spare is told to run, as one line of JSON on its standard input. */
export interface SpareJob {
  /** The script to run as the main module, with `argv` as its arguments. */
  script: string;
  argv: string[];
  cwd: string;
  /** Added to its environment. */
  env: Record<string, string>;
  /** Its process title from then on (its command line in /proc, shortened to fit). */
  title: string;
}

const SPARE_SCRIPT = join(__dirname, 'spare.js');

/** SIGKILL to a process this daemon started, if it is still there. */
export function kill(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

const STACK_FRAME = /^\s+at /;

/**
 * The last lines of a log, to say why a server did not start. Stack frames are left out: an
 * uncaught error's frames would push its message out of the lines shown.
 */
export function tail(log: string, lines = 8): string {
  try {
    // Colours (a program run with FORCE_COLOR) would hide the stack frames from the filter, and garble the message.
    return stripVTControlCharacters(readFileSync(log, 'utf8')).trimEnd().split('\n').filter((line) => !STACK_FRAME.test(line)).slice(-lines).join('\n');
  } catch {
    return '';
  }
}

// What Node says when a package or module is not where it looks (CommonJS and ESM).
const NOT_FOUND = /\b(?:ERR_MODULE_NOT_FOUND|MODULE_NOT_FOUND)\b/;
const NOT_SHIPPED = `\n(a package that only devDependencies need does not travel, nor one from outside the package root that no dependencies name: declare it in dependencies, or ship the whole root with "rpcmig": { "${OPT_OUT}": true } in package.json)`;

/**
 * The end of `log`, as a clause for an error message ("; its log ends: ..."); empty if nothing
 * is there. A module not found may be one that stayed behind or was not brought (packages.ts): the clause says so.
 */
export function lastWords(log: string): string {
  const text = tail(log);
  return text ? `; its log ends:\n${text}${NOT_FOUND.test(text) ? NOT_SHIPPED : ''}` : '';
}

/** The program's own standby bootstrap (`rpcmig/standby`), resolved as its entry would resolve it. */
export function standbyScript(entry: string): string | undefined {
  try {
    return createRequire(entry).resolve('rpcmig/standby', { paths: [dirname(entry)] });
  } catch {
    return undefined;
  }
}

/**
 * Ends a process this daemon started, found again by pid after a restart: only if its
 * environment, as it started, holds one of `marks` (`NAME=value`), so that a pid reused by
 * another process is never hit. True when it was ended.
 */
export function end(pid: number, marks: string[]): boolean {
  let environ: string;
  try {
    environ = readFileSync(`/proc/${pid}/environ`, 'latin1');
  } catch {
    return false;
  }
  if (!environ.split('\0').some((variable) => marks.includes(variable))) return false;
  try {
    process.kill(pid, 'SIGKILL');
    return true;
  } catch {
    return false;
  }
}
