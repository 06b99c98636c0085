// Daemons for the benchmarks, as a user runs them: the default count of blank files
// (`--blanks`) and directories, each daemon left to make them before the first move, as a
// daemon started ahead of its moves has.
import { DEFAULT_BLANKS, DIRS_PER_BLANK } from '../daemon/blanks.js';
import type { Cluster } from '../test/helpers/cluster.js';
import { blankDirsOf, blanksOf, type DaemonProcess } from '../test/helpers/daemon.js';
import { waitFor } from '../test/helpers/process.js';

const BLANKS_WAIT_MS = 120_000;

export async function benchDaemons(cluster: Cluster, count: number): Promise<DaemonProcess[]> {
  const daemons: DaemonProcess[] = [];
  for (let n = 0; n < count; n++) daemons.push(await cluster.daemon({}, ['--blanks', String(DEFAULT_BLANKS)]));
  await blanksMade(() => Math.min(...daemons.map(blanksOf)), () => Math.min(...daemons.map(blankDirsOf)));
  return daemons;
}

/** Waits until `files()` and `dirs()` reach the daemon's default numbers of blank files and directories. */
export async function blanksMade(files: () => number, dirs: () => number): Promise<void> {
  const want = Math.ceil(DEFAULT_BLANKS * DIRS_PER_BLANK);
  if (!(await waitFor(() => files() >= DEFAULT_BLANKS && dirs() >= want, BLANKS_WAIT_MS, 100))) {
    throw new Error(`only ${files()} of ${DEFAULT_BLANKS} blank files and ${dirs()} of ${want} directories made in ${BLANKS_WAIT_MS / 1000} s`);
  }
}
