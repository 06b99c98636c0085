// A server's registration with its local daemon (the paper's MD). The link stays open for the
// server's life: it is the control connection, and the daemon unregisters the server when it
// closes. Without a key or a daemon the server serves alone and says so once.
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { openDaemon, loadKey, within, type DaemonLink } from './daemonlink.js';

export interface Registration {
  readonly link: DaemonLink;
  /** Set when the daemon knows a newer epoch of this server: where it serves. */
  readonly stale?: { to: string; epoch: number };
  close(): void;
}

/** What the daemon records to start this program again elsewhere (the migration issue). */
function programRecord(name: string, address: string, epoch: number): Record<string, unknown> {
  const entry = process.argv[1] ? resolve(process.argv[1]) : '';
  return {
    name, pid: process.pid, address, entry, argv: process.argv.slice(2), root: packageRoot(entry),
    cwd: process.cwd(), execArgv: process.execArgv, epoch,
  };
}

/** The nearest directory above `entry` holding a package.json; the entry's own directory if none. */
function packageRoot(entry: string): string {
  let dir = dirname(entry);
  for (let depth = 0; depth < 64; depth++) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    const parent = dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  return dirname(entry);
}

function alone(name: string, why: string): undefined {
  process.stderr.write(`rpcmig: ${why}; ${name} serves alone and cannot migrate\n`);
  return undefined;
}

/** A link a standby opened before the program ran: the first registration uses it. */
let adopted: DaemonLink | undefined;

export function adoptLink(link: DaemonLink): void {
  adopted = link;
}

/** Registers `name` at `address` with the daemon at `daemon`; undefined when serving alone. */
export async function register(name: string, address: string, epoch: number, daemon: string, keyFile?: string): Promise<Registration | undefined> {
  let link: DaemonLink;
  try {
    link = adopted ?? (await openDaemon(daemon, loadKey(keyFile)));
    adopted = undefined;
  } catch (error) {
    return alone(name, reason(error));
  }
  let answer: { stale?: { to: string; epoch: number } } | undefined;
  try {
    answer = (await within(REGISTER_TIMEOUT_MS, link.call('register', [programRecord(name, address, epoch)]))) as { stale?: { to: string; epoch: number } };
  } catch (error) {
    link.close();
    return alone(name, `the daemon at ${daemon} refused to register ${name} (${reason(error)})`);
  }
  let closing = false;
  void link.closed.then(() => {
    if (!closing) process.stderr.write(`rpcmig: lost the daemon at ${daemon}; ${name} serves alone and cannot migrate\n`);
  });
  const stale = typeof answer?.stale?.to === 'string' && typeof answer.stale.epoch === 'number' ? answer.stale : undefined;
  return { link, stale, close: () => ((closing = true), link.close()) };
}

/** A daemon that takes the connection but never answers must not hold serve() up. */
const REGISTER_TIMEOUT_MS = 5000;

function reason(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
