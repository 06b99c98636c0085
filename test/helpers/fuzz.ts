// A bounded, seeded fuzzer for the two ports that face the network: a server's and a daemon's
// (before the handshake, and after it). Each case opens a connection, sends bytes — random,
// a valid message mutated, a huge length prefix, a valid frame split into many chunks, or a
// half sent and then silence — and closes it. The caller checks that the target still answers.
import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { Packr } from 'msgpackr';
import { loadKey, openDaemon, parseAddress } from '../../runtime/daemonlink.js';
import { offerHandshake } from '../../runtime/handshake.js';
import { connect as connectClient, invoke, WHEREIS } from '../../runtime/index.js';
import { COUNTER, type Cluster } from './cluster.js';

/** mulberry32: small, fast, and the same sequence for the same seed everywhere. */
export function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const packr = new Packr({ useRecords: false });
const VALID: unknown[] = [
  [0, 1, 'incr', [1]],
  [0, 2, 'get', []],
  [2, 'rpcmig.hello', ['fuzzclient0001', 0]],
  [0, 3, 'register', [{ name: 'fuzz', pid: 1, address: '127.0.0.1:9', entry: '/x', argv: [], root: '/' }]],
  [0, 4, 'prepare', [{ id: '0123456789abcdef', name: 'fuzz', source: '127.0.0.1:1', entry: 'a.js', argv: [], execArgv: [], cwd: '', manifest: { entries: [{ path: 'a.js', size: 1, mode: 420, hash: 'a'.repeat(64) }] } }]],
  [0, 5, 'lookup', ['fuzz']],
];
/** Headers that announce far more than follows: str32, bin32, array32, map32, ext32. */
const HUGE = [0xdb, 0xc6, 0xdd, 0xdf, 0xc9].map((type) => Buffer.from([type, 0xff, 0xff, 0xff, 0xf0]));

export type Case = { kind: 'bytes' | 'mutated' | 'huge' | 'chunked' | 'half-open'; chunks: Buffer[] };

export function makeCase(next: () => number): Case {
  const pick = <T>(list: readonly T[]) => list[Math.floor(next() * list.length)];
  const bytes = (n: number) => Buffer.from(Array.from({ length: n }, () => Math.floor(next() * 256)));
  const valid = packr.pack(pick(VALID));
  switch (pick(['bytes', 'mutated', 'huge', 'chunked', 'half-open'] as const)) {
    case 'bytes':
      return { kind: 'bytes', chunks: [bytes(1 + Math.floor(next() * 512))] };
    case 'mutated': {
      const copy = Buffer.from(valid);
      for (let flips = 1 + Math.floor(next() * 4); flips > 0; flips--) copy[Math.floor(next() * copy.length)] = Math.floor(next() * 256);
      const cut = next() < 0.3 ? Math.floor(next() * copy.length) : copy.length;
      return { kind: 'mutated', chunks: [copy.subarray(0, cut), valid] };
    }
    case 'huge':
      return { kind: 'huge', chunks: [Buffer.concat([Buffer.from([0x94, 0x00, 0x07]), pick(HUGE), bytes(64)])] };
    case 'chunked': {
      const chunks: Buffer[] = [];
      for (let at = 0; at < valid.length; ) {
        const size = 1 + Math.floor(next() * 3);
        chunks.push(valid.subarray(at, at + size));
        at += size;
      }
      return { kind: 'chunked', chunks };
    }
    default:
      return { kind: 'half-open', chunks: [valid.subarray(0, Math.max(1, valid.length >> 1))] };
  }
}

/** Sends one case on a new connection (after the handshake when `key` is given); resolves when done. */
export function send(address: string, fuzz: Case, key?: Buffer, waitMs = 20): Promise<void> {
  const colon = address.lastIndexOf(':');
  const socket: Socket = connect({ host: address.slice(0, colon), port: Number(address.slice(colon + 1)) });
  socket.on('error', () => undefined);
  socket.on('data', () => undefined);
  return new Promise<void>((resolve) => {
    const done = () => {
      socket.destroy();
      resolve();
    };
    const deadline = setTimeout(done, 2000);
    socket.once('close', () => (clearTimeout(deadline), resolve()));
    socket.once('connect', async () => {
      try {
        if (key) await offerHandshake(socket, key, address, 1000);
        for (const chunk of fuzz.chunks) {
          if (socket.destroyed) break;
          socket.write(chunk);
          if (fuzz.kind === 'chunked') await new Promise((next) => setImmediate(next));
        }
      } catch {
        // refused: that is an answer too
      }
      setTimeout(() => (clearTimeout(deadline), done()), waitMs);
    });
  });
}

/** Resident memory of a process, in bytes (Linux). */
export function rss(pid: number): number {
  return Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) * 1024;
}

export interface Campaign {
  cases: number;
  /** Resident memory before and after, in bytes. */
  before: number;
  after: number;
  /** The first problem found, if any. */
  failure?: string;
}

/**
 * `cases` cases against `address` from `seed`; every 50 cases (and at the end) the process
 * must be alive and `answers` must say it still serves. Stops at the first problem.
 */
export async function campaign(seed: number, cases: number, address: string, pid: number, answers: () => Promise<boolean>, key?: Buffer, alive = (p: number) => { try { process.kill(p, 0); return true; } catch { return false; } }): Promise<Campaign> {
  const next = random(seed);
  const before = rss(pid);
  for (let i = 0; i < cases; i++) {
    await send(address, makeCase(next), key);
    if (i % 50 !== 49 && i !== cases - 1) continue;
    if (!alive(pid)) return { cases: i + 1, before, after: 0, failure: `the process exited at case ${i} (seed ${seed})` };
    if (!(await answers().catch(() => false))) return { cases: i + 1, before, after: rss(pid), failure: `no answer after case ${i} (seed ${seed})` };
  }
  return { cases, before, after: rss(pid) };
}

export interface Target {
  label: string;
  address: string;
  pid: number;
  /** Whether the process still serves: asked of the built-in whereis or the daemon's lookup. */
  answers(): Promise<boolean>;
  /** Set for the daemon port after the handshake. */
  key?: Buffer;
}

/**
 * A daemon and a counter server registered with it, as the three targets of a campaign: the
 * server's port, and the daemon's port before and after the handshake. Fuzzed calls may change
 * the counter itself, so the server's liveness is asked of its built-in whereis.
 */
export async function fuzzTargets(cluster: Cluster): Promise<{ targets: Target[]; close(): Promise<void> }> {
  const daemon = await cluster.daemon();
  const server = await cluster.server(COUNTER, daemon, ['--name', 'fuzzed']);
  const client = await connectClient<{ [WHEREIS](): string }>({ ...parseAddress(server.ready[0], 0), exactlyOnce: false });
  const key = loadKey(cluster.key.file);
  const daemonAnswers = async () => {
    const link = await openDaemon(daemon.address, key);
    try {
      return ((await link.call('lookup', ['fuzzed'])) as { address: string }).address === server.ready[0];
    } finally {
      link.close();
    }
  };
  const targets: Target[] = [
    { label: 'server port', address: server.ready[0], pid: server.pid, answers: async () => (await invoke(client, WHEREIS)) === server.ready[0] },
    { label: 'daemon port, before the handshake', address: daemon.address, pid: daemon.pid, answers: daemonAnswers },
    { label: 'daemon port, after the handshake', address: daemon.address, pid: daemon.pid, answers: daemonAnswers, key },
  ];
  return { targets, close: () => client.close() };
}
