// Hosts for migration tests on loopback: daemons on port 0 with their own spools, servers
// registered with them, the CLI run without blocking (clients in the test keep calling), and
// the cleanup of servers that daemons started, by the pids their daemons list.
import { spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CLI, cleanEnv, startDaemonProcess, tempDir, writeKey, type CliResult, type DaemonProcess } from './daemon.js';
import { ROOT, startNode, stop, waitFor, isAlive, type Started } from './process.js';
import { connect, type Client } from '../../runtime/index.js';

export const FIXTURES = join(ROOT, 'fixtures', 'dist');
export const RDICT = join(FIXTURES, 'rdict', 'server.js');
export const COUNTER = join(FIXTURES, 'counter', 'server.js');

export interface Listing {
  servers: Array<{ name: string; pid: number; address: string; state: string }>;
  forwards: Array<{ name: string; to: string }>;
}

export interface Restartable {
  daemon: DaemonProcess;
  spool: string;
  restart(env?: NodeJS.ProcessEnv): Promise<DaemonProcess>;
}

export class Cluster {
  readonly dir = tempDir();
  readonly key = writeKey(this.dir);
  readonly daemons: DaemonProcess[] = [];
  /** Clients made by `connect`: closed by `close`. */
  private readonly clients: Array<{ close(): Promise<void> }> = [];
  /** Pids of servers seen on any daemon, with that daemon's address: ended by `end` and `close`. */
  private readonly servers = new Map<number, string>();
  /** Names handed out by `named`, so that no two servers of a cluster share one. */
  private named_ = 0;
  /** Daemons started by `daemon`: each has a home of its own, `host<n>`, even after others ended. */
  private hosts = 0;

  /** Starts a daemon with its own spool; `env` reaches the daemon (and what it starts); `args` are more options of `rpcmig daemon`. */
  async daemon(env: NodeJS.ProcessEnv = {}, args: string[] = []): Promise<DaemonProcess> {
    const daemon = await startDaemonProcess(this.key.file, join(this.dir, `host${this.hosts++}`), env, undefined, args);
    this.daemons.push(daemon);
    return daemon;
  }

  /**
   * A daemon that `restart` starts again on the same port and spool, as after a crash; `env`
   * (failpoints, time-outs) applies to the first run, `restart`'s own to the next.
   */
  async restartable(label: string, env: NodeJS.ProcessEnv = {}): Promise<Restartable> {
    const home = join(this.dir, label);
    const first = await startDaemonProcess(this.key.file, home, env);
    this.daemons.push(first);
    return {
      daemon: first,
      spool: join(home, 'spool'),
      restart: async (again: NodeJS.ProcessEnv = {}) => {
        const next = await startDaemonProcess(this.key.file, home, again, first.address);
        this.daemons.push(next);
        return next;
      },
    };
  }

  /** Starts `node ...nodeArgs script ...args` registered with `daemon`, in `cwd` (fixtures/); resolves once it listens. */
  async server(script: string, daemon: DaemonProcess, args: string[] = [], extraEnv: NodeJS.ProcessEnv = {}, { nodeArgs = [], cwd = join(ROOT, 'fixtures') }: { nodeArgs?: string[]; cwd?: string } = {}): Promise<Started> {
    const env = cleanEnv({ RPCMIG_DAEMON: daemon.address, RPCMIG_KEY_FILE: this.key.file, ...extraEnv });
    const started = await startNode(script, { args, env, nodeArgs, cwd });
    this.servers.set(started.pid, daemon.address);
    return started;
  }

  /** Starts `script` on `daemon` under a name of its own (`prefix` and a number) with `--name`, and a client of it (closed by `close`). */
  async named<T extends object>(script: string, daemon: DaemonProcess, prefix: string): Promise<{ name: string; client: Client<T> }> {
    const name = `${prefix}${this.named_++}`;
    await this.server(script, daemon, ['--name', name]);
    return { name, client: await this.connect<T>(name, daemon) };
  }

  /** `rpcmig ...args` with this cluster's key, run to completion without blocking the test. */
  cli(args: string[], env: NodeJS.ProcessEnv = {}, timeout = 60_000): Promise<CliResult> {
    const child = spawn(process.execPath, [CLI, ...args], { cwd: ROOT, env: cleanEnv({ RPCMIG_KEY_FILE: this.key.file, ...env }) });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (text: string) => (stdout += text));
    child.stderr.setEncoding('utf8').on('data', (text: string) => (stderr += text));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeout);
    return new Promise((resolve) => child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    }));
  }

  async migrate(name: string, from: DaemonProcess, to: DaemonProcess, extra: string[] = []): Promise<CliResult> {
    return this.cli(['migrate', name, '--daemon', from.address, '--to', to.address, '--json', ...extra]);
  }

  async ls(daemon: DaemonProcess): Promise<Listing> {
    const result = await this.cli(['ls', '--daemon', daemon.address, '--json']);
    if (result.code !== 0) throw new Error(`ls failed: ${result.stderr}`);
    const listing = JSON.parse(result.stdout) as Listing;
    for (const server of listing.servers) this.servers.set(server.pid, daemon.address);
    return listing;
  }

  /** The server `name` as `daemon` lists it, waiting (bounded) for it to be there and serving. */
  async serving(daemon: DaemonProcess, name: string, timeout = 5000): Promise<Listing['servers'][number]> {
    let found: Listing['servers'][number] | undefined;
    const deadline = Date.now() + timeout;
    for (let round = 0; round < 100 && Date.now() < deadline; round++) {
      found = (await this.ls(daemon)).servers.find((s) => s.name === name && s.state === 'serving');
      if (found) return found;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    throw new Error(`${name} is not serving on the daemon at ${daemon.address}`);
  }

  /** A client of the server `name`, found through `daemon` with this cluster's key; closed by `close`. */
  async connect<T extends object>(name: string, daemon: DaemonProcess, options: { timeout?: number } = {}): Promise<Client<T>> {
    const client = await connect<T>(name, { daemon: daemon.address, keyFile: this.key.file, ...options });
    this.clients.push(client);
    return client;
  }

  /** Closes the clients `connect` made, and ends every server seen (the daemons started some of them, detached) and every daemon. */
  async close(): Promise<void> {
    await Promise.all(this.clients.splice(0).map((client) => client.close()));
    await this.end([...this.daemons], true);
  }

  /**
   * Ends the daemons at these daemons' addresses (every run of a restarted one) and every server
   * seen on them, now or before; other daemons and their servers run on (unless `everyServer`).
   */
  async end(daemons: DaemonProcess[], everyServer = false): Promise<void> {
    const addresses = new Set(daemons.map((daemon) => daemon.address));
    const ending = this.daemons.filter((daemon) => addresses.has(daemon.address));
    for (const daemon of ending) if (isAlive(daemon.pid)) await this.ls(daemon).catch(() => undefined);
    const servers = [...this.servers].filter(([, address]) => everyServer || addresses.has(address)).map(([pid]) => pid);
    // And what they started for a move that never settled (a daemon killed mid-move leaves its
    // standby or moved server trying to register again): found by its environment.
    servers.push(...[...addresses].flatMap((address) => startedBy(address)).filter((pid) => !servers.includes(pid)));
    await Promise.all(servers.map(async (pid) => {
      this.servers.delete(pid);
      await stop(pid);
      if (isAlive(pid)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone meanwhile
        }
      }
      await waitFor(() => !isAlive(pid), 3000);
    }));
    // Their spares end with them (their standard input closes); one that did not is ended too.
    const spares = [...addresses].flatMap((address) => sparesOf(address));
    await Promise.all(ending.map((daemon) => stop(daemon.pid)));
    for (const daemon of ending) this.daemons.splice(this.daemons.indexOf(daemon), 1);
    await Promise.all(spares.map(async (pid) => {
      if (await waitFor(() => !isAlive(pid), 3000)) return;
      process.kill(pid, 'SIGKILL');
      await waitFor(() => !isAlive(pid), 3000);
    }));
  }
}

/**
 * Processes the daemon at `address` started for a move (its standbys and moved servers), or for
 * the move `id`: by their environment, or, for one that began as a spare, by the title it took.
 */
export function startedBy(address: string, id?: string): number[] {
  return processesOf(address).filter(({ environ, cmdline }) =>
    environ.some((v) => v.startsWith(`RPCMIG_ARRIVAL=${id ?? ''}`) || v.startsWith(`RPCMIG_STANDBY=${id ?? ''}`))
    || cmdline.startsWith(`rpcmig move ${id ?? ''}`)).map(({ pid }) => pid);
}

/** The spares of the daemon at `address` that no move took. */
export function sparesOf(address: string): number[] {
  return processesOf(address).filter(({ environ, cmdline }) => environ.some((v) => v.startsWith('RPCMIG_SPARE=')) && !cmdline.startsWith('rpcmig move ')).map(({ pid }) => pid);
}

/** Processes whose environment, as they started, names the daemon at `address`. */
function processesOf(address: string): { pid: number; environ: string[]; cmdline: string }[] {
  const found = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const environ = readFileSync(`/proc/${entry}/environ`, 'latin1').split('\0');
      if (!environ.includes(`RPCMIG_DAEMON=${address}`)) continue;
      found.push({ pid: Number(entry), environ, cmdline: readFileSync(`/proc/${entry}/cmdline`, 'latin1') });
    } catch {
      continue;
    }
  }
  return found;
}

/** True once the process is stopped (state T in /proc/PID/stat). */
export function frozen(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /s, '').startsWith('T');
  } catch {
    return false;
  }
}

/** Parses `rpcmig migrate --json` output, failing with its stderr. */
export function breakdown(result: CliResult): Record<string, number | string> {
  if (result.code !== 0) throw new Error(`migrate exited ${result.code}: ${result.stderr}`);
  return JSON.parse(result.stdout) as Record<string, number | string>;
}
