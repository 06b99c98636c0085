// A server's registration with its local daemon (the paper's MD). The link stays open for the
// server's life: it is the control connection, and the daemon unregisters the server when it
// closes. Without a key or a daemon the server serves alone and says so once.
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { openDaemon, loadKey, within, type DaemonLink } from './daemonlink.js';

export interface Registration {
  /** The control connection now; replaced when the daemon comes back after losing it. */
  readonly link: DaemonLink;
  /** Set when the daemon knows a newer epoch of this server: where it serves. */
  readonly stale?: { to: string; epoch: number };
  /** Called with each new control connection after a reconnect. */
  onRelink(handler: (link: DaemonLink) => void): void;
  close(): void;
}

/** Set by a daemon on the process it starts for a move: the move's id. */
export const ARRIVAL_ENV = 'RPCMIG_ARRIVAL';

/** What the daemon records to start this program again elsewhere (the migration issue). */
export function programRecord(name: string, address: string, epoch: number): Record<string, unknown> {
  const entry = process.argv[1] ? resolve(process.argv[1]) : '';
  const arrival = process.env[ARRIVAL_ENV];
  return {
    name, pid: process.pid, address, entry, argv: process.argv.slice(2), root: packageRoot(entry),
    cwd: process.cwd(), execArgv: process.execArgv, epoch,
    // The move that started this process: a daemon that restarted before it settled that move asks its source.
    ...(arrival ? { arrival } : {}),
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
export async function register(
  name: string, address: string, epoch: number, daemon: string, keyFile?: string,
  /** Where the server stands in a move, told to a daemon it registers with again. */
  report: () => MigrationReport = () => ({}),
): Promise<Registration | undefined> {
  let key: Buffer;
  let link: DaemonLink;
  try {
    key = loadKey(keyFile);
    link = adopted ?? (await openDaemon(daemon, key));
    adopted = undefined;
  } catch (error) {
    return alone(name, reason(error));
  }
  const record = programRecord(name, address, epoch);
  let answer: RegisterAnswer;
  try {
    answer = await registerOn(link, record);
  } catch (error) {
    link.close();
    return alone(name, `the daemon at ${daemon} refused to register ${name} (${reason(error)})`);
  }
  const stale = typeof answer?.stale?.to === 'string' && typeof answer.stale.epoch === 'number' ? answer.stale : undefined;
  return new Control(link, stale, () => openDaemon(daemon, key).then(async (next) => {
    await registerOn(next, { ...record, ...report() }).catch((error: unknown) => {
      next.close();
      throw error;
    });
    return next;
  }), (line) => process.stderr.write(`rpcmig: ${name}: ${line} (the daemon at ${daemon})\n`));
}

type RegisterAnswer = { stale?: { to: string; epoch: number } } | undefined;

/** A server in the middle of a move holds its calls for `migration`; one that moved says where. */
export interface MigrationReport {
  migration?: string;
  moved?: { to: string; epoch: number };
}

function registerOn(link: DaemonLink, record: Record<string, unknown>): Promise<RegisterAnswer> {
  return within(REGISTER_TIMEOUT_MS, link.call('register', [record])) as Promise<RegisterAnswer>;
}

/** Back-off between attempts to register again with a daemon that went away. */
const RETRY_FIRST_MS = 100;
const RETRY_LAST_MS = 5000;
/** About two weeks of attempts at the longest back-off. */
const RETRY_ATTEMPTS = 250_000;

/**
 * The server's control connection. When the daemon goes away (restart, crash) the server
 * serves on and registers again as soon as a daemon answers at the same address.
 */
class Control implements Registration {
  private closing = false;
  private readonly handlers: Array<(link: DaemonLink) => void> = [];

  constructor(
    public link: DaemonLink,
    readonly stale: { to: string; epoch: number } | undefined,
    private readonly reopen: () => Promise<DaemonLink>,
    private readonly log: (line: string) => void,
  ) {
    this.watch(link);
  }

  onRelink(handler: (link: DaemonLink) => void): void {
    this.handlers.push(handler);
  }

  close(): void {
    this.closing = true;
    this.link.close();
  }

  private watch(link: DaemonLink): void {
    void link.closed.then(() => {
      if (this.closing || link !== this.link) return;
      this.log('lost the daemon; serving on, and registering again when it is back');
      void this.reconnect();
    });
  }

  private async reconnect(): Promise<void> {
    for (let attempt = 0; attempt < RETRY_ATTEMPTS && !this.closing; attempt++) {
      await new Promise((resolve) => setTimeout(resolve, Math.min(RETRY_LAST_MS, RETRY_FIRST_MS << Math.min(attempt, 16))).unref());
      if (this.closing) return;
      let next: DaemonLink;
      try {
        next = await this.reopen();
      } catch {
        continue;
      }
      if (this.closing) return next.close();
      this.link = next;
      this.log('registered again');
      this.watch(next);
      for (const handler of this.handlers) handler(next);
      return;
    }
  }
}

/** A daemon that takes the connection but never answers must not hold serve() up. */
const REGISTER_TIMEOUT_MS = 5000;

function reason(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
