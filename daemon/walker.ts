// The source daemon walks a program's tree (manifest.ts) in a worker thread, kept for the
// daemon's life so that its cache of file hashes lasts from one move to the next. The walk of
// a large tree stats every file: on the daemon's own thread, it would hold up every step of
// the moves under way — the paused server's report, the copy, the commit — for as long.
import { isMainThread, parentPort, Worker } from 'node:worker_threads';
import { RpcmigError } from '../runtime/errors.js';
import { buildManifest } from './manifest.js';
import type { Manifest } from './validate.js';

interface Request {
  id: number;
  root: string;
  exclude: string[];
}

type Reply = { id: number; manifest: Manifest; walkMs: number } | { id: number; error: { message: string; code?: string; details?: Record<string, unknown> } };

export class Walker {
  private worker?: Worker;
  private next = 0;
  private readonly pending = new Map<number, { resolve(reply: Reply): void; reject(error: Error): void }>();

  /** The manifest of the tree at `root`; `walked` is told how long listing and stat'ing it took. */
  async walk(root: string, exclude: string[], walked?: (ms: number) => void): Promise<Manifest> {
    const id = this.next++;
    const reply = await new Promise<Reply>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.thread().postMessage({ id, root, exclude } satisfies Request);
    });
    if ('error' in reply) {
      const { message, code, details } = reply.error;
      throw code === undefined ? new Error(message) : new RpcmigError(code as RpcmigError['code'], message, details);
    }
    walked?.(reply.walkMs);
    return reply.manifest;
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
  port.on('message', ({ id, root, exclude }: Request) => {
    let walkMs = 0;
    buildManifest(root, { exclude, walked: (ms) => (walkMs = ms) }).then(
      (manifest) => port.postMessage({ id, manifest, walkMs } satisfies Reply),
      (error: Error) => {
        const { code, details } = error as Partial<RpcmigError>;
        port.postMessage({ id, error: { message: error.message, ...(code ? { code, details } : {}) } } satisfies Reply);
      },
    );
  });
}
