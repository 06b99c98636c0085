// The source daemon walks a program's tree (manifest.ts) in a worker thread, kept for the
// daemon's life so that its cache of file hashes lasts from one move to the next. The walk of
// a large tree stats every file: on the daemon's own thread, it would hold up every step of
// the moves under way — the paused server's report, the copy, the commit — for as long. The
// thread runs at a lower priority than the daemon and its servers, so that a walk beside a
// move takes the time the move leaves; and it sends a manifest across only when it changed.
import { readlinkSync } from 'node:fs';
import { setPriority } from 'node:os';
import { isMainThread, parentPort, Worker } from 'node:worker_threads';
import { RpcmigError } from '../runtime/errors.js';
import { SEALED_MTIME } from './blobs.js';
import { buildManifest, manifestId } from './manifest.js';
import type { Manifest } from './validate.js';

// The walking thread's nice value (Linux schedules threads one by one).
const WALKER_NICE = 10;

interface Request {
  id: number;
  root: string;
  exclude: string[];
  /** The tree was built here from verified blobs of this manifest (see ManifestOptions.built). */
  seed?: Manifest;
}

/** `manifest` is left out when it is the one last sent for that root. */
type Reply = { id: number; program: string; manifest?: Manifest; walkMs: number } | { id: number; error: { message: string; code?: string; details?: Record<string, unknown> } };

/** A walked tree: its manifest and the manifest's id. */
export interface Walked {
  manifest: Manifest;
  id: string;
}

export class Walker {
  private worker?: Worker;
  private next = 0;
  private readonly pending = new Map<number, { resolve(reply: Reply): void; reject(error: Error): void }>();
  /** The manifest last received per root, from the thread now running. */
  private readonly last = new Map<string, Walked>();

  /**
   * The manifest of the tree at `root` and its id; `walked` is told how long listing and
   * stat'ing it took. `seed`: the manifest the tree was built from here (see ManifestOptions.built).
   */
  async walk(root: string, exclude: string[], walked?: (ms: number) => void, seed?: Manifest): Promise<Walked> {
    const id = this.next++;
    const reply = await new Promise<Reply>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.thread().postMessage({ id, root, exclude, seed } satisfies Request);
    });
    if ('error' in reply) {
      const { message, code, details } = reply.error;
      throw code === undefined ? new Error(message) : new RpcmigError(code as RpcmigError['code'], message, details);
    }
    walked?.(reply.walkMs);
    const manifest = reply.manifest ?? this.last.get(root)?.manifest;
    if (manifest === undefined) throw new Error(`the walk of ${root} came back without its manifest`);
    const result = { manifest, id: reply.program };
    this.last.set(root, result);
    return result;
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

if (!isMainThread && parentPort) {
  const port = parentPort;
  const sent = new Map<string, string>();
  try {
    // "PID/task/TID": this thread's id, which setpriority(2) takes for this thread alone.
    setPriority(Number(readlinkSync('/proc/thread-self').split('/').pop()), WALKER_NICE);
  } catch {
    // Not Linux, or not allowed: the walk runs at the daemon's priority.
  }
  port.on('message', ({ id, root, exclude, seed }: Request) => {
    let walkMs = 0;
    const walked = (ms: number) => (walkMs = ms);
    buildManifest(root, { exclude, walked, ...(seed ? { built: { manifest: seed, mtime: SEALED_MTIME } } : {}) }).then(
      (manifest) => {
        const program = manifestId(manifest);
        const changed = sent.get(root) !== program;
        sent.set(root, program);
        port.postMessage({ id, program, walkMs, ...(changed ? { manifest } : {}) } satisfies Reply);
      },
      (error: Error) => {
        const { code, details } = error as Partial<RpcmigError>;
        port.postMessage({ id, error: { message: error.message, ...(code ? { code, details } : {}) } } satisfies Reply);
      },
    );
  });
}
