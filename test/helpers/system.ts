// System commands and child output for the namespace helpers: a command run to completion
// within a bound, a probe whose failure is an answer, and the first match in a child's output.
import { spawnSync, type ChildProcess } from 'node:child_process';

const COMMAND_TIMEOUT_MS = 5_000;

/** Runs a system command to completion, bounded in time; failures name the command and its stderr. */
export function sh(file: string, args: string[]): string {
  const r = spawnSync(file, args, { encoding: 'utf8', timeout: COMMAND_TIMEOUT_MS, stdio: ['ignore', 'pipe', 'pipe'] });
  if (r.error !== undefined || r.status !== 0) {
    const why = r.error?.message ?? (r.signal !== null ? `killed by ${r.signal}` : `exit ${r.status}`);
    throw new Error(`\`${file} ${args.join(' ')}\` failed (${why}): ${(r.stderr ?? '').trim()}`);
  }
  return r.stdout;
}

/** For probes and cleanup, where failure is an answer (or the thing is already gone). */
export function succeeds(file: string, args: string[]): boolean {
  return spawnSync(file, args, { timeout: COMMAND_TIMEOUT_MS, stdio: 'ignore' }).status === 0;
}

/** The first capture group of `pattern` in a host process's stdout; rejects on exit or after `timeoutMs`. */
export function firstMatch(child: ChildProcess, pattern: RegExp, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`no ${pattern} within ${timeoutMs} ms: ${out}`)), timeoutMs);
    child.stdout?.setEncoding('utf8').on('data', (text: string) => {
      out += text;
      const match = pattern.exec(out);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    });
    child.once('exit', (code) => reject(new Error(`exited (${code}) before ${pattern}: ${out}`)));
  });
}
