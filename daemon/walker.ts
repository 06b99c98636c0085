// The source daemon walks a program's tree (manifest.ts) in a worker thread, kept for the
// daemon's life so that its cache of file hashes lasts from one move to the next. The walk of
// a large tree stats every file: on the daemon's own thread, it would hold up every step of
// the moves under way — the paused server's report, the copy, the commit — for as long. The
// thread runs at a lower priority than the daemon and its servers, so that a walk beside a
// move takes the time the move leaves; and it sends a manifest across only when it changed.
// It watches the directories of the trees it walked (watch.ts): a tree that has not changed
// since is not walked again, and its move starts from its id at once.
import { readlinkSync } from 'node:fs';
import { setPriority } from 'node:os';
import { isMainThread, parentPort, Worker } from 'node:worker_threads';
import { RpcmigError } from '../runtime/errors.js';
import { SEALED_MTIME } from './blobs.js';
import { buildManifest, filesOf, manifestId } from './manifest.js';
import { TreeWatch } from './watch.js';
import type { Placed } from './packages.js';
import type { Manifest } from './validate.js';

// The walking thread's nice value (Linux schedules threads one by one).
const WALKER_NICE = 10;

interface WalkRequest {
  id: number;
  root: string;
  exclude: string[];
  /** The tree was built here from verified blobs of this manifest (see ManifestOptions.built). */
  seed?: Manifest;
}
/** Which files of the trees walked had these hashes (manifest.ts, `filesOf`). */
interface FilesRequest {
  id: number;
  hashes: string[];
}
type Request = WalkRequest | FilesRequest;

/** `manifest`, `behind` and `above` are left out when the manifest is the one last sent for that root; `walkMs` when the tree was not listed (unchanged). */
type Reply = { id: number; program: string; manifest?: Manifest; behind?: string[]; above?: Placed; walkMs?: number } | { id: number; files: Array<[hash: string, path: string]> } | { id: number; error: { message: string; code?: string; details?: Record<string, unknown> } };

/** A walked tree: its manifest and the manifest's id, what of it stays behind (ManifestOptions.behind), and what comes from outside it (ManifestOptions.above). */
export interface Walked {
  manifest: Manifest;
  id: string;
  behind: string[];
  above: Placed;
}

export class Walker {
  private worker?: Worker;
  private next = 0;
  private readonly pending = new Map<number, { resolve(reply: Reply): void; reject(error: Error): void }>();
  /** The manifest last received per root, from the thread now running. */
  private readonly last = new Map<string, Walked>();

  /**
   * The manifest of the tree at `root` and its id; `walked` is told how long listing and
   * stat'ing it took, unless the tree was not listed: it did not change since its last walk. `seed`: the manifest the tree was built from here (see ManifestOptions.built).
   */
  async walk(root: string, exclude: string[], walked?: (ms: number) => void, seed?: Manifest): Promise<Walked> {
    const reply = await this.ask({ id: this.next++, root, exclude, seed });
    if ('files' in reply) throw new Error(`the walk of ${root} came back without its manifest`);
    if ('error' in reply) {
      const { message, code, details } = reply.error;
      throw code === undefined ? new Error(message) : new RpcmigError(code as RpcmigError['code'], message, details);
    }
    if (reply.walkMs !== undefined) walked?.(reply.walkMs);
    const last = this.last.get(root);
    const manifest = reply.manifest ?? last?.manifest;
    if (manifest === undefined) throw new Error(`the walk of ${root} came back without its manifest`);
    const result = { manifest, id: reply.program, behind: reply.behind ?? last?.behind ?? [], above: reply.above ?? last?.above ?? new Map() };
    this.last.set(root, result);
    return result;
  }

  /**
   * Files of the trees this thread walked that had these hashes when hashed: a path for each
   * hash found, to be read and checked again. None before the first walk.
   */
  async filesOf(hashes: string[]): Promise<Map<string, string>> {
    if (this.worker === undefined || hashes.length === 0) return new Map();
    const reply = await this.ask({ id: this.next++, hashes });
    return new Map('files' in reply ? reply.files : []);
  }

  private ask(request: Request): Promise<Reply> {
    return new Promise<Reply>((resolve, reject) => {
      this.pending.set(request.id, { resolve, reject });
      this.thread().postMessage(request);
    });
  }

  private thread(): Worker {
    if (this.worker) return this.worker;
    const worker = new Worker(__filename);
    worker.unref();
    worker.on('message', (reply: Reply) => {
      this.pending.get(reply.id)?.resolve(reply);
      this.pending.delete(reply.id);
    });
    const lost = (why: string) => {
      if (this.worker !== worker) return;
      this.worker = undefined;
      this.last.clear();
      for (const { reject } of this.pending.values()) reject(new Error(`the walk of the program's tree failed: ${why}`));
      this.pending.clear();
    };
    worker.on('error', (error) => lost(error.message));
    worker.on('exit', (code) => lost(`its thread exited with code ${code}`));
    this.worker = worker;
    return worker;
  }

  close(): void {
    const worker = this.worker;
    this.worker = undefined;
    void worker?.terminate();
  }
}

/** Trees whose watch is clean are not walked again (see watch.ts); at most this many are kept watched, the last walked. */
const MOST_TREES = 16;

if (!isMainThread && parentPort) {
  const port = parentPort;
  const sent = new Map<string, string>();
  /** The watches of the trees walked last, by root; a clean one's id is the one last sent. */
  const trees = new Map<string, TreeWatch>();
  try {
    // "PID/task/TID": this thread's id, which setpriority(2) takes for this thread alone.
    setPriority(Number(readlinkSync('/proc/thread-self').split('/').pop()), WALKER_NICE);
  } catch {
    // Not Linux, or not allowed: the walk runs at the daemon's priority.
  }
  const reply = (message: Reply) => port.postMessage(message);
  port.on('message', async (request: Request) => {
    if ('hashes' in request) return reply({ id: request.id, files: [...filesOf(request.hashes)] });
    const { id, root, exclude, seed } = request;
    const known = trees.get(root);
    trees.delete(root);
    const program = sent.get(root);
    if (known && !seed && program !== undefined) {
      // A change made before this request has its event queued already: it reaches the watch first.
      for (let turn = 0; turn < 2; turn++) await new Promise((resolve) => setImmediate(resolve));
      if (known.clean) {
        trees.set(root, known);
        return reply({ id, program });
      }
    }
    known?.close();
    const watch = new TreeWatch();
    let walkMs = 0;
    let behind: string[] = [];
    let above: Placed = new Map();
    const walked = (ms: number) => (walkMs = ms);
    const options = { exclude, walked, behind: (paths: string[]) => (behind = paths), above: (placed: Placed) => (above = placed), watch: (dir: string) => watch.add(dir) };
    buildManifest(root, { ...options, ...(seed ? { built: { manifest: seed, mtime: SEALED_MTIME } } : {}) }).then(
      (manifest) => {
        const program = manifestId(manifest);
        const changed = sent.get(root) !== program;
        sent.set(root, program);
        reply({ id, program, walkMs, ...(changed ? { manifest, behind, above } : {}) });
        keep(root, watch);
      },
      (error: Error) => {
        watch.close();
        const { code, details } = error as Partial<RpcmigError>;
        reply({ id, error: { message: error.message, ...(code ? { code, details } : {}) } });
      },
    );
  });
  /** A tree whose every directory is watched, and did not change while it was walked, is not walked again until it changes. */
  const keep = (root: string, watch: TreeWatch) => {
    if (!watch.clean) return;
    // Two walks of one root that overlapped: the later one's watch is kept.
    const previous = trees.get(root);
    if (previous && previous !== watch) previous.close();
    trees.delete(root);
    trees.set(root, watch);
    for (const [oldest, old] of trees) {
      if (trees.size <= MOST_TREES) break;
      old.close();
      trees.delete(oldest);
    }
  };
}
