// A small server for tests that need a real process: `node calc-server.js [maxFrame]`.
// Prints `listening HOST:PORT` once it serves.
import { serve } from '../../runtime/index.js';

const sleep = (ms: number) => new Promise<void>((done) => setTimeout(done, ms));

export const calc = {
  add(a: number, b: number): number {
    return a + b;
  },
  echo<T>(value: T): T {
    return value;
  },
  async slow<T>(ms: number, value: T): Promise<T> {
    await sleep(Math.min(ms, 60_000));
    return value;
  },
  fail(message: string): never {
    throw new Error(message);
  },
  pid(): number {
    return process.pid;
  },
};

async function main(): Promise<void> {
  const maxFrame = process.argv[2] ? Number(process.argv[2]) : undefined;
  const server = await serve('calc', calc, { maxFrame });
  process.stdout.write(`listening ${server.address}\n`);
  process.once('SIGTERM', () => void server.close().then(() => process.exit(0)));
}

void main();
