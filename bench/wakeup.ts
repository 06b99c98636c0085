// What one hop of a move's pause costs on this machine: a loopback round trip between two Node
// processes, when the answering one was kept busy and when it slept first (idle 1 to 20 ms, as
// a daemon, a paused server or a client waiting for a reply is during a move). Each of the
// dozen hops of a pause wakes a process that was idle.
//   node dist/bench/wakeup.js
import { fork } from 'node:child_process';
import { connect, createServer, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { machine, median, writeSection } from './results.js';

/** Idle gaps before each round trip, in ms; 0: back to back. */
const GAPS = [0, 1, 5, 20];
const ROUNDS = 200;

/** The echoing process: answers every byte with the same byte. */
function echo(): void {
  const server = createServer((socket) => {
    socket.setNoDelay(true);
    socket.on('data', (bytes) => socket.write(bytes));
  });
  server.listen(0, '127.0.0.1', () => process.send?.((server.address() as AddressInfo).port));
  process.on('disconnect', () => process.exit(0));
}

async function roundTrips(socket: Socket, gap: number): Promise<number[]> {
  const times: number[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    if (gap > 0) await new Promise((resolve) => setTimeout(resolve, gap));
    const sent = performance.now();
    await new Promise<void>((resolve) => {
      socket.once('data', () => resolve());
      socket.write('x');
    });
    times.push((performance.now() - sent) * 1000);
  }
  return times.sort((a, b) => a - b);
}

async function main(): Promise<void> {
  const child = fork(__filename, ['echo'], { stdio: 'inherit' });
  try {
    const port = await new Promise<number>((resolve) => child.once('message', (message) => resolve(Number(message))));
    const socket = connect(port, '127.0.0.1');
    socket.setNoDelay(true);
    await new Promise((resolve) => socket.once('connect', resolve));
    await roundTrips(socket, 0);
    const lines = ['| idle before each round trip | median µs | 90th percentile µs | ÷ back to back (median) |', '| ---: | ---: | ---: | ---: |'];
    let base = 0;
    for (const gap of GAPS) {
      const times = await roundTrips(socket, gap);
      const middle = median(times);
      base ||= middle;
      const row = `| ${gap === 0 ? 'none (back to back)' : `${gap} ms`} | ${middle.toFixed(0)} | ${times[Math.floor(times.length * 0.9)].toFixed(0)} | ${(middle / base).toFixed(2)}× |`;
      lines.push(row);
      console.log(row);
    }
    socket.destroy();
    writeSection('wakeup', [
      '## One hop: a loopback round trip to a process that was idle',
      '',
      `Machine: ${machine()}. Command: \`node dist/bench/wakeup.js\`. ${ROUNDS} round trips of one byte between two Node processes per row; the answering process was idle for the time given before each (its CPU may sleep meanwhile). A move's pause is a chain of about a dozen such hops between five processes, each of which waits idle for the one before.`,
      '',
      ...lines,
    ].join('\n'));
  } finally {
    child.disconnect();
  }
}

if (process.argv[2] === 'echo') echo();
else main().catch((error: Error) => {
  console.error(error);
  process.exit(1);
});
