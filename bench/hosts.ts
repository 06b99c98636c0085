// Daemons for the benchmarks, as a user runs them: the default count of blank files
// (`--blanks`), each daemon left to make them before the first move, as a daemon started
// ahead of its moves has.
import { DEFAULT_BLANKS } from '../daemon/blanks.js';
import type { Cluster } from '../test/helpers/cluster.js';
import { blanksOf, type DaemonProcess } from '../test/helpers/daemon.js';
import { waitFor } from '../test/helpers/process.js';

const BLANKS_WAIT_MS = 120_000;

export async function benchDaemons(cluster: Cluster, count: number): Promise<DaemonProcess[]> {
  const daemons: DaemonProcess[] = [];
  for (let n = 0; n < count; n++) daemons.push(await cluster.daemon({}, ['--blanks', String(DEFAULT_BLANKS)]));
  await blanksMade(() => Math.min(...daemons.map(blanksOf)));
  return daemons;
}

/** Waits until `count()` reaches the daemon's default number of blanks. */
export async function blanksMade(count: () => number): Promise<void> {
  if (!(await waitFor(() => count() >= DEFAULT_BLANKS, BLANKS_WAIT_MS, 100))) {
    throw new Error(`only ${count()} of ${DEFAULT_BLANKS} blank files made in ${BLANKS_WAIT_MS / 1000} s`);
  }
}
