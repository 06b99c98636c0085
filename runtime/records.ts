// Completion records (after RIFL, SOSP 2015): a server remembers the outcome of each call of
// each client that said hello, so that a call resent after a lost reply is answered from the
// record instead of running twice. A client names its calls by (client id, msgid): it binds a
// connection with `[2, "rpcmig.hello", [clientId, below]]` and numbers its calls across all
// its connections, so the msgid of a resent call is the same; `below` acknowledges every
// outcome under it, and those records are dropped. A client silent for the lease is forgotten.
import type { WireError } from './errors.js';

export const HELLO = 'rpcmig.hello';

export type Reply = (error: WireError | null, result: unknown) => void;

/** A client's records beyond this many drop the oldest: a client must acknowledge. */
export const MAX_RECORDS_PER_CLIENT = 65_536;
/** Slots a new client starts with; doubled as its records fill them, up to the maximum. */
const FIRST_SLOTS = 16;
const EMPTY = -1;
/** The error slot of a call still running: an object no reply carries, compared by identity. */
const RUNNING: WireError = { code: 'RUNNING', message: 'the call is still running' };

/**
 * One client's records, in a ring indexed by call number: call `seq` lives in slot
 * `seq & mask`, its number, error and result in three parallel arrays. A client numbers its
 * calls in order and acknowledges the old ones, so its live numbers are a window that fits the
 * ring: a call costs no object and no hashing, and acknowledged records go without a rehash.
 * Two live numbers meet in one slot only when the window is wider than the ring: it doubles
 * then, while it is a quarter full (numbers skipped cost no memory); past that, or at the
 * maximum, the record already there goes.
 */
export class ClientRecords {
  below = 0;
  seen = Date.now();
  /** Slots holding a record. */
  private count = 0;
  private mask = FIRST_SLOTS - 1;
  private seqs: number[] = new Array<number>(FIRST_SLOTS).fill(EMPTY);
  private errors: Array<WireError | null> = new Array<WireError | null>(FIRST_SLOTS).fill(null);
  private results: unknown[] = new Array<unknown>(FIRST_SLOTS).fill(undefined);
  /** Resends waiting for calls still running, by call number (rare: a reply was lost). */
  private waiting: Map<number, Reply[]> | undefined;

  constructor(readonly id: string) {}

  /** Whether call `seq` has a record, finished or running. */
  has(seq: number): boolean {
    return this.seqs[seq & this.mask] === seq;
  }

  /** A new call runs: its record starts now (in the slot of a call acknowledged while it runs, if need be). */
  start(seq: number): void {
    let slot = seq & this.mask;
    while (this.seqs[slot] >= this.below && this.mask < MAX_RECORDS_PER_CLIENT - 1 && 4 * this.count > this.mask) {
      this.grow();
      slot = seq & this.mask;
    }
    if (this.seqs[slot] === EMPTY) this.count++;
    this.seqs[slot] = seq;
    this.errors[slot] = RUNNING;
    this.results[slot] = undefined;
  }

  /** Records the outcome of call `seq` and answers the resends that waited for it. */
  finish(seq: number, error: WireError | null, result: unknown): void {
    const slot = seq & this.mask;
    if (this.seqs[slot] === seq) {
      // Acknowledged while it ran (the client gave up on it): nobody will ask again.
      if (seq < this.below) this.clear(slot);
      else {
        this.errors[slot] = error;
        this.results[slot] = result;
      }
    }
    if (this.waiting === undefined) return;
    const waiting = this.waiting.get(seq);
    this.waiting.delete(seq);
    if (waiting) for (const reply of waiting) reply(error, result);
  }

  /** Answers a resent call from its record: now if it finished, else when it does. */
  answer(seq: number, reply: Reply): void {
    const slot = seq & this.mask;
    const error = this.errors[slot];
    if (error !== RUNNING) return reply(error, this.results[slot]);
    this.waiting ??= new Map();
    const waiting = this.waiting.get(seq);
    if (waiting) waiting.push(reply);
    else this.waiting.set(seq, [reply]);
  }

  /** Drops the records the client has acknowledged (those of calls still running stay). */
  acknowledge(below: number): void {
    this.seen = Date.now();
    const from = this.below;
    if (below <= from) return;
    this.below = below;
    if (below - from > this.mask) {
      for (let slot = 0; slot <= this.mask; slot++) this.dropAcknowledged(slot);
    } else {
      for (let seq = from; seq < below; seq++) this.dropAcknowledged(seq & this.mask);
    }
  }

  get size(): number {
    return this.count;
  }

  /** Finished outcomes as `[seq, error, result, ...]`, for the state file. */
  finished(): unknown[] {
    const calls: unknown[] = [];
    for (let slot = 0; slot <= this.mask; slot++) {
      if (this.seqs[slot] !== EMPTY && this.errors[slot] !== RUNNING) calls.push(this.seqs[slot], this.errors[slot], this.results[slot]);
    }
    return calls;
  }

  /** A finished outcome read back from the state file. */
  put(seq: number, error: WireError | null, result: unknown): void {
    this.start(seq);
    this.finish(seq, error, result);
  }

  private dropAcknowledged(slot: number): void {
    const seq = this.seqs[slot];
    if (seq !== EMPTY && seq < this.below && this.errors[slot] !== RUNNING) this.clear(slot);
  }

  private clear(slot: number): void {
    this.seqs[slot] = EMPTY;
    this.errors[slot] = null;
    this.results[slot] = undefined;
    this.count--;
  }

  /** Twice the slots; of two records that meet in one slot, the newer call's stays. */
  private grow(): void {
    const { seqs, errors, results } = this;
    const slots = 2 * seqs.length;
    this.mask = slots - 1;
    this.seqs = new Array<number>(slots).fill(EMPTY);
    this.errors = new Array<WireError | null>(slots).fill(null);
    this.results = new Array<unknown>(slots).fill(undefined);
    this.count = 0;
    for (let old = 0; old < seqs.length; old++) {
      const seq = seqs[old];
      const slot = seq & this.mask;
      if (seq === EMPTY || this.seqs[slot] > seq) continue;
      if (this.seqs[slot] === EMPTY) this.count++;
      this.seqs[slot] = seq;
      this.errors[slot] = errors[old];
      this.results[slot] = results[old];
    }
  }
}

/** What the state file carries: `[clientId, below, [msgid, error, result, ...]]` per client. */
export type SavedRecords = Array<[string, number, unknown[]]>;

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
    for (const client of this.clients.values()) records += client.size;
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
    for (const client of this.clients.values()) saved.push([client.id, client.below, client.finished()]);
    return saved;
  }

  restore(saved: SavedRecords): void {
    for (const [id, below, calls] of saved) {
      const client = new ClientRecords(id);
      client.below = below;
      for (let i = 0; i + 2 < calls.length; i += 3) client.put(calls[i] as number, calls[i + 1] as WireError | null, calls[i + 2]);
      this.clients.set(id, client);
    }
  }

  close(): void {
    clearInterval(this.sweeper);
  }
}
