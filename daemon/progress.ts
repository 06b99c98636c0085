// The progress of a long copy (the program's blobs or the state file): reported to the CLI
// once a copy runs longer than a second, at most ten times a second.
import type { Step } from './move.js';

/** What the CLI is told while a copy runs longer than PROGRESS_AFTER_MS. */
export interface Progress {
  step: Step;
  sent: number;
  total: number;
  elapsed_ms: number;
}

const PROGRESS_AFTER_MS = process.env.RPCMIG_PROGRESS_AFTER_MS === undefined ? 1000 : Number(process.env.RPCMIG_PROGRESS_AFTER_MS);
const PROGRESS_EVERY_MS = 100;

/** Counts the bytes of one copy and reports them, at most every PROGRESS_EVERY_MS, once it runs long. */
export class Meter {
  private step: Step = 'copy';
  private sent = 0;
  private total = 0;
  private started = 0;
  private last = 0;

  constructor(private readonly report: (progress: Progress) => void) {}

  begin(step: Step, total: number): void {
    Object.assign(this, { step, total, sent: 0, started: performance.now(), last: 0 });
  }

  add(bytes: number): void {
    this.sent += bytes;
    const now = performance.now();
    if (now - this.started < PROGRESS_AFTER_MS || now - this.last < PROGRESS_EVERY_MS) return;
    this.last = now;
    this.report({ step: this.step, sent: this.sent, total: this.total, elapsed_ms: now - this.started });
  }
}
