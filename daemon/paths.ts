// Paths of a program's tree as the daemon checks them: where a path really leads, and whether
// it lies inside a directory.
import { realpathSync } from 'node:fs';
import { dirname, sep } from 'node:path';

/** Whether `path` is `dir` or below it. */
export function isInside(dir: string, path: string): boolean {
  return path === dir || path.startsWith(dir.endsWith(sep) ? dir : dir + sep);
}

/** Whether `path` is one of `dirs` or below one of them (`dirs`: absolute, without a trailing separator). */
export function isBelowAny(dirs: ReadonlySet<string>, path: string): boolean {
  for (let at = path; ; at = dirname(at)) {
    if (dirs.has(at)) return true;
    if (dirname(at) === at) return false;
  }
}

/** The real path, or undefined where there is none (a dangling link, nothing there). */
export function realOrUndefined(path: string): string | undefined {
  try {
    return realpathSync.native(path);
  } catch {
    return undefined;
  }
}
