// Link faults for test hosts on a kernel without sch_netem (CONFIG_NET_SCH_NETEM), each from
// what this kernel has: a rate by a tbf qdisc on the host's switch port, loss by an iptables
// `statistic` rule dropping at random, and delay by an iptables NFQUEUE rule whose packets
// nfqdelay.py holds for the delay before it accepts them. All act on packets delivered to the
// host, so a round trip through it gains the delay once and a transfer to it is held to the rate.
import type { ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { ROOT } from './process.js';
import { firstMatch, sh, succeeds } from './system.js';

/** Applied to packets delivered to the host (one way), so a round trip through it gains delayMs once. */
export interface NetemSpec { delayMs?: number; jitterMs?: number; lossPercent?: number; rateKbit?: number }

/** Where a host's faults go: its namespace (loss, delay) and its port on the switch (rate). */
export interface ShapedLink { hostNs: string; switchNs: string; port: string }

/** Starts a command inside the host's namespace, as the lab does (so the lab ends it too). */
export type SpawnInHost = (cmd: string, args: string[]) => ChildProcess;

export interface Shaping { clear(): Promise<void> }

const CHAIN = 'RPCMIG_NETEM';
const DELAYER = join(ROOT, 'test', 'helpers', 'nfqdelay.py');
const READY_MS = 10_000;
const EXIT_MS = 3_000;
const QUEUE = '0'; // queues are per namespace, and each host has its own

/** Applies `spec` to the link; the result takes it off again. */
export async function shape(link: ShapedLink, spec: NetemSpec, spawnInHost: SpawnInHost): Promise<Shaping> {
  if (spec.delayMs === undefined && spec.lossPercent === undefined && spec.rateKbit === undefined) {
    throw new Error('netem spec is empty; use clearNetem to remove shaping');
  }
  const missing = spec.lossPercent !== undefined || spec.delayMs !== undefined ? missingTool() : undefined;
  if (missing !== undefined) throw new Error(`netem's loss and delay need ${missing} (.ci/run installs it)`);
  let delayer: ChildProcess | undefined;
  const shaping = { clear: () => clear(link, delayer) };
  try {
    if (spec.rateKbit !== undefined) sh('tc', ['-n', link.switchNs, 'qdisc', 'replace', 'dev', link.port, 'root', ...tbfArgs(spec.rateKbit)]);
    if (spec.lossPercent !== undefined || spec.delayMs !== undefined) iptables(link.hostNs, '-N', CHAIN);
    if (spec.lossPercent !== undefined) {
      iptables(link.hostNs, '-A', CHAIN, '-m', 'statistic', '--mode', 'random', '--probability', String(spec.lossPercent / 100), '-j', 'DROP');
    }
    if (spec.delayMs !== undefined) {
      delayer = spawnInHost('python3', [DELAYER, QUEUE, String(spec.delayMs), String(spec.jitterMs ?? 0)]);
      await firstMatch(delayer, /^(ready)$/m, READY_MS);
      // Without the bypass, packets would be dropped in the moment the delayer is gone.
      iptables(link.hostNs, '-A', CHAIN, '-j', 'NFQUEUE', '--queue-num', QUEUE, '--queue-bypass');
    }
    if (spec.lossPercent !== undefined || spec.delayMs !== undefined) iptables(link.hostNs, '-A', 'PREROUTING', '-i', 'eth0', '-j', CHAIN);
  } catch (error) {
    await shaping.clear();
    throw error;
  }
  return shaping;
}

/** A burst of 20 ms of traffic, and at least a few full packets: a smaller one stalls a slow link. */
function tbfArgs(rateKbit: number): string[] {
  const burstBytes = Math.max(4_096, Math.ceil((rateKbit * 1000) / 8 / 50));
  return ['tbf', 'rate', `${rateKbit}kbit`, 'burst', String(burstBytes), 'latency', '500ms'];
}

function iptables(ns: string, ...args: string[]): void {
  sh('ip', ['netns', 'exec', ns, 'iptables', '-w', '5', '-t', 'mangle', ...args]);
}

/** Idempotent: whatever is not there is already cleared. */
async function clear(link: ShapedLink, delayer: ChildProcess | undefined): Promise<void> {
  succeeds('tc', ['-n', link.switchNs, 'qdisc', 'del', 'dev', link.port, 'root']);
  const ipt = (...args: string[]) => succeeds('ip', ['netns', 'exec', link.hostNs, 'iptables', '-w', '5', '-t', 'mangle', ...args]);
  ipt('-D', 'PREROUTING', '-i', 'eth0', '-j', CHAIN);
  ipt('-F', CHAIN);
  ipt('-X', CHAIN);
  if (delayer?.pid === undefined || delayer.exitCode !== null || delayer.signalCode !== null) return;
  // SIGTERM: the delayer accepts what it still holds before it exits, so no packet is lost.
  const exited = new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, EXIT_MS);
    delayer.once('exit', () => { clearTimeout(timer); resolve(); });
  });
  delayer.kill('SIGTERM');
  await exited;
  if (delayer.exitCode === null && delayer.signalCode === null) delayer.kill('SIGKILL');
}

/** Names what loss and delay lack, where the tests would otherwise fail on a command not found. */
function missingTool(): string | undefined {
  if (!succeeds('iptables', ['--version'])) return 'iptables (Debian package iptables)';
  if (!succeeds('python3', ['--version'])) return 'python3';
  return undefined;
}
