// A client host's load for migration tests: increments the counter NAME (found through the
// daemon at DAEMON, with the key in KEYFILE) with CALLERS connections pipelining 8 calls
// each, for MS milliseconds, then prints {acknowledged, errors, final} as one JSON line.
import { connect } from '../../runtime/index.js';

interface Counter {
  incr(by?: number): number;
  get(): number;
}

async function main(): Promise<void> {
  const [name, daemon, keyFile, ms, callers] = process.argv.slice(2);
  const options = { daemon, keyFile };
  const clients = await Promise.all(Array.from({ length: Number(callers) }, () => connect<Counter>(name, options)));
  const until = Date.now() + Number(ms);
  let acknowledged = 0;
  const errors: string[] = [];
  await Promise.all(clients.map(async (client) => {
    for (let round = 0; Date.now() < until && round < 1_000_000; round++) {
      for (const outcome of await Promise.allSettled(Array.from({ length: 8 }, () => client.incr(1)))) {
        if (outcome.status === 'fulfilled') acknowledged++;
        else errors.push(String(outcome.reason));
      }
    }
  }));
  const final = await clients[0].get();
  await Promise.all(clients.map((client) => client.close()));
  console.log(JSON.stringify({ acknowledged, errors: errors.slice(0, 5), final }));
}

main().catch((error: Error) => {
  console.log(JSON.stringify({ acknowledged: 0, errors: [error.message], final: -1 }));
  process.exitCode = 1;
});
