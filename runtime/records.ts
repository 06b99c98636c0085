// Completion records (after RIFL, SOSP 2015): a server remembers the outcome of each call of
// each client that said hello, so that a call resent after a lost reply is answered from the
// record instead of running twice. A client names its calls by (client id, msgid): it binds a
// connection with `[2, "rpcmig.hello", [clientId, below]]` and numbers its calls across all
// its connections, so the msgid of a resent call is the same; `below` acknowledges every
// outcome under it, and those records are dropped. A client silent for the lease is forgotten.
import type { WireError } from './errors.js';

export const HELLO = 'rpcmig.hello';

export type Reply = (error: WireError | null, result: unknown) => void;

/** The outcome of a call; while it runs, the resends waiting for it. */
export interface Completion {
  running: boolean;
  error: WireError | null;
  result: unknown;
  waiting?: Reply[];
}

export class ClientRecords {
  readonly calls = new Map<number, Completion>();
  below = 0;
  seen = Date.now();

  constructor(readonly id: string) {}

  /** Drops the records the client has acknowledged. */
  acknowledge(below: number): void {
    this.seen = Date.now();
    if (below <= this.below) return;
    this.below = below;
    for (const [seq, completion] of this.calls) if (seq < below && !completion.running) this.calls.delete(seq);
  }

  /** A new call runs: its record starts now (the oldest goes past MAX_RECORDS_PER_CLIENT). */
  start(seq: number): Completion {
    const completion: Completion = { running: true, error: null, result: undefined };
    this.calls.set(seq, completion);
    if (this.calls.size > MAX_RECORDS_PER_CLIENT) this.calls.delete(this.calls.keys().next().value as number);
    return completion;
  }
}

/** What the state file carries: `[clientId, below, [msgid, error, result, ...]]` per client. */
export type SavedRecords = Array<[string, number, unknown[]]>;

/** A client's records beyond this many drop the oldest: a client must acknowledge. */
export const MAX_RECORDS_PER_CLIENT = 65_536;
const ID = /^[A-Za-z0-9_-]{8,64}$/;

export class CompletionRecords {
  private readonly clients = new Map<string, ClientRecords>();
  private readonly sweeper: NodeJS.Timeout;

  constructor(private readonly leaseMs: number) {
    this.sweeper = setInterval(() => this.expire(), Math.max(10, leaseMs / 4)).unref();
  }

  /** The records of the client a hello names; undefined for a malformed hello. */
  hello(params: unknown[]): ClientRecords | undefined {
    const [id, below] = params;
    if (typeof id !== 'string' || !ID.test(id) || !Number.isSafeInteger(below)) return undefined;
    let client = this.clients.get(id);
    if (!client) this.clients.set(id, (client = new ClientRecords(id)));
    client.acknowledge(below as number);
    return client;
  }

  get size(): number {
    let records = 0;
    for (const client of this.clients.values()) records += client.calls.size;
    return records;
  }

  get clientCount(): number {
    return this.clients.size;
  }

  /** Forgets the clients silent for longer than the lease, with their records. */
  expire(now = Date.now()): void {
    for (const [id, client] of this.clients) {
      if (now - client.seen > this.leaseMs) this.clients.delete(id);
    }
  }

  /** Finished outcomes, for the state file (calls still running are not part of a snapshot). */
  save(): SavedRecords {
    const saved: SavedRecords = [];
    for (const client of this.clients.values()) {
      const calls: unknown[] = [];
      for (const [seq, completion] of client.calls) if (!completion.running) calls.push(seq, completion.error, completion.result);
      saved.push([client.id, client.below, calls]);
    }
    return saved;
  }

  restore(saved: SavedRecords): void {
    for (const [id, below, calls] of saved) {
      const client = new ClientRecords(id);
      client.below = below;
      for (let i = 0; i + 2 < calls.length; i += 3) {
        client.calls.set(calls[i] as number, { running: false, error: calls[i + 1] as WireError | null, result: calls[i + 2] });
      }
      this.clients.set(id, client);
    }
  }

  close(): void {
    clearInterval(this.sweeper);
  }
}

/** Records the outcome and answers the resends that waited for it. */
export function complete(completion: Completion, error: WireError | null, result: unknown): void {
  completion.running = false;
  completion.error = error;
  completion.result = result;
  const waiting = completion.waiting;
  completion.waiting = undefined;
  if (waiting) for (const reply of waiting) reply(error, result);
}
