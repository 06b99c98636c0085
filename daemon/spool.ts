// The daemon's spool directory: private to its user, and where a server it starts finds the
// cluster key when the daemon was given the key itself rather than a file.
import { mkdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** Creates the spool mode 0700; refuses one that group or others can access. */
export function prepareSpool(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const mode = statSync(dir).mode & 0o777;
  if (mode & 0o077) {
    const octal = mode.toString(8).padStart(4, '0');
    throw new Error(`the spool ${dir} is accessible by group or others (mode ${octal}); chmod 700 it`);
  }
}

/** The key file for started servers: the daemon's own, or a copy in the spool. */
export function keyFileFor(spool: string, key: Buffer, keyFile: string | undefined): string {
  if (keyFile) return keyFile;
  const file = join(spool, 'cluster.key');
  writeFileSync(file, key.toString('hex') + '\n', { mode: 0o600 });
  return file;
}
