// Test hosts as Linux network namespaces: each host is a namespace with its own address on a
// private bridge, so end-to-end tests run daemons, servers and clients as if on separate machines.
import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import type { Test } from 'uvu';
import { shape, type NetemSpec, type Shaping } from './shaping.js';
import { sh, succeeds } from './system.js';

export { firstMatch } from './system.js';
export type { NetemSpec } from './shaping.js';

export interface Host { name: string; ns: string; address: string }
export interface RunResult { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }
/** subnet: first three octets of the hosts' /24; it exists only inside these namespaces. */
export interface HostsOptions { subnet?: string }
export interface Hosts {
  readonly hosts: Host[];
  /** Namespace holding the bridge; also the common prefix of every namespace this run made. */
  readonly prefix: string;
  host(name: string): Host;
  exec(host: string, cmd: string, args?: string[], options?: SpawnOptions): ChildProcess;
  run(host: string, cmd: string, args?: string[], options?: { timeoutMs?: number; input?: string }): Promise<RunResult>;
  cut(host: string): void;
  heal(host: string): void;
  /** Delay, loss and a rate on packets delivered to the host (shaping.ts says how, without sch_netem). */
  netem(host: string, spec: NetemSpec): Promise<void>;
  clearNetem(host: string): Promise<void>;
  destroy(): Promise<void>;
}

const COMMAND_TIMEOUT_MS = 5_000;
const RUN_TIMEOUT_MS = 10_000;
const EXIT_WAIT_MS = 2_000;
const NAME = /^[a-z][a-z0-9]{0,15}$/;
const OURS = /^rpcmig-(\d+)-\d+(-[a-z0-9]+)?$/;

let created = 0;
const live = new Set<Lab>();

export function canUseNetns(): boolean {
  return process.getuid?.() === 0 && succeeds('ip', ['netns', 'list']);
}

/** Throws the message a non-root run should see: these tests need root, they are not optional. */
export function requireNetns(): void {
  if (canUseNetns()) return;
  throw new Error('network-namespace tests need root and a working `ip netns` (iproute2); '
    + 'CI runs as root. Run the tests as root, e.g. `sudo npm test`.');
}

export function listNamespaces(): string[] {
  return sh('ip', ['netns', 'list']).split('\n').map((line) => line.split(' ')[0]).filter((n) => n !== '');
}

function kill(pid: number): void {
  try { process.kill(pid, 'SIGKILL'); } catch { /* already gone */ }
}

function killNamespacePids(ns: string): void {
  const out = spawnSync('ip', ['netns', 'pids', ns], { encoding: 'utf8', timeout: COMMAND_TIMEOUT_MS });
  for (const pid of (out.stdout ?? '').split('\n').filter((p) => p !== '')) kill(Number(pid));
}

function alive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch (e) { return (e as NodeJS.ErrnoException).code === 'EPERM'; }
}

/** Removes namespaces left by runs that died without cleaning up (SIGKILL, power loss). */
export function sweepStale(): void {
  for (const ns of listNamespaces()) {
    const match = OURS.exec(ns);
    if (match === null || alive(Number(match[1]))) continue;
    killNamespacePids(ns);
    succeeds('ip', ['netns', 'del', ns]);
  }
}

class Lab implements Hosts {
  readonly hosts: Host[] = [];
  private readonly made: string[] = [];
  private readonly children = new Set<ChildProcess>();
  private readonly shaped = new Map<string, Shaping>();
  private destroyed = false;

  constructor(readonly prefix: string) {}

  /** The switch namespace holds the bridge, so the root namespace gains no links or routes. */
  build(names: string[], subnet: string): void {
    this.addNamespace(this.prefix);
    this.ip(this.prefix, 'link', 'set', 'lo', 'up');
    // No STP, no forward delay: a port that comes up (heal) forwards at once.
    this.ip(this.prefix, 'link', 'add', 'br0', 'type', 'bridge', 'forward_delay', '0', 'stp_state', '0');
    this.ip(this.prefix, 'link', 'set', 'br0', 'up');
    names.forEach((name, i) => this.addHost(name, i, subnet));
  }

  private addNamespace(ns: string): void {
    sh('ip', ['netns', 'add', ns]);
    this.made.push(ns);
  }

  private addHost(name: string, index: number, subnet: string): void {
    const host: Host = { name, ns: `${this.prefix}-${name}`, address: `${subnet}.${index + 1}` };
    this.addNamespace(host.ns);
    // Both ends are created directly in their namespaces; neither ever appears in the root one.
    sh('ip', ['link', 'add', port(index), 'netns', this.prefix, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', host.ns]);
    this.ip(this.prefix, 'link', 'set', port(index), 'master', 'br0', 'up');
    this.ip(host.ns, 'link', 'set', 'lo', 'up');
    this.ip(host.ns, 'addr', 'add', `${host.address}/24`, 'dev', 'eth0');
    this.ip(host.ns, 'link', 'set', 'eth0', 'up');
    this.hosts.push(host);
  }

  private ip(ns: string, ...args: string[]): void {
    sh('ip', ['-n', ns, ...args]);
  }

  host(name: string): Host {
    const found = this.hosts.find((h) => h.name === name);
    if (found === undefined) throw new Error(`no test host named ${name} (have ${this.hosts.map((h) => h.name).join(', ')})`);
    return found;
  }

  /** The pid is the command's own: `ip netns exec` enters the namespace and then execs it. */
  exec(host: string, cmd: string, args: string[] = [], options: SpawnOptions = {}): ChildProcess {
    if (this.destroyed) throw new Error(`test hosts ${this.prefix} are destroyed`);
    const child = spawn('ip', ['netns', 'exec', this.host(host).ns, cmd, ...args], options);
    this.children.add(child);
    child.once('exit', () => this.children.delete(child));
    return child;
  }

  run(host: string, cmd: string, args: string[] = [], options: { timeoutMs?: number; input?: string } = {}): Promise<RunResult> {
    const timeoutMs = options.timeoutMs ?? RUN_TIMEOUT_MS;
    const what = `\`${cmd} ${args.join(' ')}\` on ${host}`;
    return new Promise((resolve, reject) => {
      const child = this.exec(host, cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout?.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
      child.stderr?.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
      const timer = setTimeout(() => {
        killPid(child);
        reject(new Error(`${what} timed out after ${timeoutMs} ms; stderr: ${stderr.trim()}`));
      }, timeoutMs);
      child.once('error', (e) => { clearTimeout(timer); reject(new Error(`${what} failed to start: ${e.message}`)); });
      child.once('close', (code, signal) => { clearTimeout(timer); resolve({ code, signal, stdout, stderr }); });
      child.stdin?.end(options.input ?? '');
    });
  }

  /** Downs the switch side, like pulling the cable: the host keeps its address, packets vanish. */
  cut(host: string): void {
    this.ip(this.prefix, 'link', 'set', this.portOf(host), 'down');
  }

  heal(host: string): void {
    this.ip(this.prefix, 'link', 'set', this.portOf(host), 'up');
  }

  async netem(host: string, spec: NetemSpec): Promise<void> {
    await this.clearNetem(host);
    const link = { hostNs: this.host(host).ns, switchNs: this.prefix, port: this.portOf(host) };
    this.shaped.set(host, await shape(link, spec, (cmd, args) => this.exec(host, cmd, args, { stdio: ['ignore', 'pipe', 'inherit'] })));
  }

  async clearNetem(host: string): Promise<void> {
    await this.shaped.get(host)?.clear();
    this.shaped.delete(host);
  }

  private portOf(host: string): string {
    return port(this.hosts.indexOf(this.host(host)));
  }

  /** Idempotent: a second call finds nothing to kill or delete. */
  async destroy(): Promise<void> {
    const exits = [...this.children].map((child) => exited(child));
    this.killAll();
    await Promise.all(exits);
    this.removeNamespaces();
  }

  /** For process exit, where nothing asynchronous runs any more (also mid-destroy). */
  destroySync(): void {
    this.killAll();
    this.removeNamespaces();
  }

  private killAll(): void {
    this.destroyed = true;
    for (const child of this.children) killPid(child);
    // Catches grandchildren too (e.g. what a shell started), which our pids do not cover.
    for (const ns of this.made) killNamespacePids(ns);
  }

  private removeNamespaces(): void {
    // Deleting a host namespace destroys its veth end and with it the peer in the switch.
    for (const ns of [...this.made].reverse()) succeeds('ip', ['netns', 'del', ns]);
    this.made.length = 0;
    live.delete(this);
  }
}

const port = (index: number): string => `p${index}`;

function killPid(child: ChildProcess): void {
  if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) kill(child.pid);
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, EXIT_WAIT_MS);
    child.once('exit', () => { clearTimeout(timer); resolve(); });
  });
}

/** Cleanup on exit, uncaught errors (they end in 'exit') and Ctrl-C/kill; installed once. */
let hooked = false;
function hookExit(): void {
  if (hooked) return;
  hooked = true;
  process.once('exit', () => { for (const lab of live) lab.destroySync(); });
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(signal, () => {
      for (const lab of live) lab.destroySync();
      process.kill(process.pid, signal); // our once-listener is gone: the default action ends us
    });
  }
}

export async function createHosts(names: string[], options: HostsOptions = {}): Promise<Hosts> {
  requireNetns();
  const bad = names.filter((n) => !NAME.test(n));
  if (bad.length > 0 || new Set(names).size !== names.length || names.length === 0 || names.length > 250) {
    throw new Error(`host names must be 1..250 distinct [a-z][a-z0-9]* of ≤16 chars; got ${JSON.stringify(names)}`);
  }
  sweepStale();
  const n = created++;
  const lab = new Lab(`rpcmig-${process.pid}-${n}`);
  live.add(lab);
  hookExit();
  try {
    lab.build(names, options.subnet ?? `10.231.${n % 256}`);
  } catch (e) {
    lab.destroySync();
    throw e;
  }
  return lab;
}

/**
 * A suite's hosts, set up once: uvu 0.5 swallows an error thrown by a before hook (a run
 * without root would pass silently), so a failed `setup` fails every test of the suite with
 * its error instead. `teardown` runs after the suite, whether or not the setup went through.
 */
export function setUpOnce(suite: Test, setup: () => Promise<void>, teardown: () => Promise<void>): void {
  let failure: { error: unknown } | undefined;
  suite.before(async () => {
    await setup().catch((error: unknown) => {
      failure = { error };
    });
  });
  suite.before.each(() => {
    if (failure !== undefined) throw failure.error;
  });
  suite.after(teardown);
}
