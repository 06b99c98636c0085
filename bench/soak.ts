// The soak (issue 7): SOAK_MOVES (default 200) moves in a row of a counter hopping between
// three hosts (network namespaces), with 8 clients on a fourth host incrementing throughout.
// At every hop the server's own record of its moves must equal the hop count; at the end the
// count must equal the acknowledged increments. Daemon file descriptors and memory are read
// before and after, and no server process may be left but the one serving.
// Writes its section of bench/RESULTS.md.
//   node dist/bench/soak.js
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { COUNTER } from '../test/helpers/cluster.js';
import { CLI, tempDir, writeKey } from '../test/helpers/daemon.js';
import { createHosts, firstMatch } from '../test/helpers/netns.js';
import { ROOT } from '../test/helpers/process.js';
import { machine, writeSection } from './results.js';

const MOVES = Number(process.env.SOAK_MOVES) || 200;
const CLIENT = join(ROOT, 'dist', 'test', 'programs', 'counter-client.js');
const HOSTS = ['a', 'b', 'c'];

const fds = (pid: number) => readdirSync(`/proc/${pid}/fd`).length;
const rss = (pid: number) => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) * 1024;
const mb = (bytes: number) => (bytes / 2 ** 20).toFixed(1);

async function main(): Promise<void> {
  const dir = tempDir();
  const key = writeKey(dir);
  const env = { ...process.env, RPCMIG_KEY_FILE: key.file };
  const lab = await createHosts([...HOSTS, 'd']);
  try {
    const daemonOf = (host: string) => `${lab.host(host).address}:4111`;
    const daemons = new Map<string, number>();
    for (const host of HOSTS) {
      const child = lab.exec(host, process.execPath, [CLI, 'daemon', '--listen', daemonOf(host), '--dir', join(dir, host)], { env, stdio: ['ignore', 'pipe', 'ignore'] });
      await firstMatch(child, /listening on (\S+)/, 10_000);
      daemons.set(host, child.pid!);
    }
    const serverEnv = { ...env, RPCMIG_DAEMON: daemonOf('a'), RPCMIG_HOST: lab.host('a').address };
    await firstMatch(lab.exec('a', process.execPath, [COUNTER, '--name', 'soak'], { env: serverEnv, cwd: join(ROOT, 'fixtures'), stdio: ['ignore', 'pipe', 'ignore'] }), /listening (\S+)/, 10_000);
    const cli = async (args: string[]) => {
      const result = await lab.run('d', process.execPath, [CLI, ...args, '--key-file', key.file], { timeoutMs: 60_000 });
      if (result.code !== 0) throw new Error(`rpcmig ${args.join(' ')}: ${result.stderr}`);
      return JSON.parse(result.stdout) as Record<string, unknown>;
    };
    // Warm-up: one move through every host, so that every cache holds the program.
    for (const [from, to] of [['a', 'b'], ['b', 'c'], ['c', 'a']]) await cli(['migrate', 'soak', '--daemon', daemonOf(from), '--to', daemonOf(to), '--grace', '0.3', '--json']);
    await new Promise((resolve) => setTimeout(resolve, 800));
    const before = new Map([...daemons].map(([host, pid]) => [host, { fds: fds(pid), rss: rss(pid) }]));
    const load = lab.run('d', process.execPath, [CLIENT, 'soak', daemonOf('a'), key.file, String(MOVES * 500 + 5000), '8'], { timeoutMs: MOVES * 2000 + 60_000 });
    const started = performance.now();
    const totals: number[] = [];
    let at = 'a';
    for (let hop = 1; hop <= MOVES; hop++) {
      const to = HOSTS[(HOSTS.indexOf(at) + 1) % HOSTS.length];
      const figures = await cli(['migrate', 'soak', '--daemon', daemonOf(at), '--to', daemonOf(to), '--grace', '0.3', '--json']);
      totals.push(figures.total_ms as number);
      const where = await cli(['call', 'soak', 'where', '--daemon', daemonOf(to), '--json']);
      if (where.moves !== hop + 3) throw new Error(`hop ${hop}: the server counts ${where.moves} moves, expected ${hop + 3}`);
      at = to;
    }
    const elapsed = (performance.now() - started) / 1000;
    const outcome = await load;
    if (outcome.code !== 0) throw new Error(`clients failed: ${outcome.stdout} ${outcome.stderr}`);
    const { acknowledged, errors, final } = JSON.parse(outcome.stdout) as { acknowledged: number; errors: string[]; final: number };
    await new Promise((resolve) => setTimeout(resolve, 1500));
    const listings = await Promise.all(HOSTS.map((host) => cli(['ls', '--daemon', daemonOf(host), '--json'])));
    const live = listings.flatMap((l) => (l.servers as Array<{ name: string; state: string }>).filter((s) => s.name === 'soak'));
    const rows = [...daemons].map(([host, pid]) => {
      const was = before.get(host)!;
      return `| daemon on ${host} | ${was.fds} → ${fds(pid)} | ${mb(was.rss)} → ${mb(rss(pid))} MB |`;
    });
    const sorted = [...totals].sort((x, y) => x - y);
    const markdown = [
      `## bench/soak — ${MOVES} moves in a row across three hosts, 8 clients calling`,
      '',
      `Machine: ${machine()}. Command: \`node dist/bench/soak.js\` (root: network namespaces). Hosts a, b, c (namespaces on a bridge), clients on d; the counter hops a→b→c→a… with \`--grace 0.3\`; after every hop its own count of moves is checked.`,
      '',
      '| figure | value |',
      '| --- | --- |',
      `| moves | ${MOVES} in ${elapsed.toFixed(0)} s; total_ms median ${sorted[sorted.length >> 1].toFixed(0)}, max ${sorted.at(-1)!.toFixed(0)} |`,
      `| increments acknowledged / counted | ${acknowledged} / ${final} ${acknowledged === final ? '(equal: none lost, none doubled)' : '(DIFFERENT)'} |`,
      `| client errors | ${errors.length} |`,
      `| servers named soak still listed | ${live.map((s) => s.state).join(', ')} |`,
      '',
      '| process | open fds before → after | RSS before → after |',
      '| --- | --- | --- |',
      ...rows,
    ].join('\n');
    console.log(markdown);
    writeSection('soak', markdown);
    if (acknowledged !== final || errors.length > 0) process.exitCode = 1;
  } finally {
    await lab.destroy();
  }
}

void main().catch((error: Error) => {
  console.error(error);
  process.exitCode = 1;
});
