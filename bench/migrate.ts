// The paper's experiment, measured: rdict with 1,000 words moved 10 times between two daemons
// on loopback while a client looks words up in a closed loop. Reports each move's breakdown
// (DESIGN §7), the longest lookup the client saw during each move, and the medians beside
// Hori & Ito's 1993 figures. Prints a table and writes its section of bench/RESULTS.md.
//   node dist/bench/migrate.js
import { connect } from '../runtime/index.js';
import { breakdown, Cluster, RDICT } from '../test/helpers/cluster.js';
import { machine, median, writeSection } from './results.js';

const WORDS = 1000;
const MOVES = 10;
const PAPER = { total_ms: 930, snapshot_ms: 80, copy_ms: 410 };

interface Rdict {
  insert(word: string, meaning: string): boolean;
  lookup(word: string): string | null;
}

interface Move {
  figures: Record<string, number | string>;
  /** The longest lookup, in ms, that was in flight during the move. */
  clientWorst: number;
}

async function main(): Promise<void> {
  const cluster = new Cluster();
  try {
    const hosts = [await cluster.daemon(), await cluster.daemon()];
    await cluster.server(RDICT, hosts[0]);
    const dict = await connect<Rdict>('rdict', { daemon: hosts[0].address, keyFile: cluster.key.file });
    for (let i = 0; i < WORDS; i++) await dict.insert(`word${i}`, `meaning of word ${i}`);
    let worst = 0;
    let running = true;
    const client = (async () => {
      for (let i = 0; running && i < 100_000_000; i++) {
        const sent = performance.now();
        if ((await dict.lookup(`word${i % WORDS}`)) === null) throw new Error(`word${i % WORDS} lost`);
        worst = Math.max(worst, performance.now() - sent);
      }
    })();
    const moves: Move[] = [];
    for (let n = 0; n < MOVES; n++) {
      await new Promise((resolve) => setTimeout(resolve, 200));
      worst = 0;
      const figures = breakdown(await cluster.migrate('rdict', hosts[n % 2], hosts[(n + 1) % 2], ['--grace', '1']));
      await new Promise((resolve) => setTimeout(resolve, 100));
      moves.push({ figures, clientWorst: worst });
      console.log(`move ${n + 1}: total ${(figures.total_ms as number).toFixed(1)} ms, client worst ${worst.toFixed(1)} ms`);
    }
    running = false;
    await client;
    await dict.close();
    report(moves);
  } finally {
    await cluster.close();
  }
}

function report(moves: Move[]): void {
  const col = (field: string) => moves.map((m) => m.figures[field] as number);
  const ms = (x: number) => x.toFixed(1);
  const lines = [
    '| move | quiesce ms | snapshot ms | copy ms | start ms | total ms | pause ms | client worst ms | state bytes | program bytes sent |',
    '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  moves.forEach((m, i) => {
    const f = m.figures as Record<string, number>;
    lines.push(`| ${i + 1} | ${ms(f.quiesce_ms)} | ${ms(f.snapshot_ms)} | ${ms(f.copy_ms)} | ${ms(f.start_ms)} | ${ms(f.total_ms)} | ${ms(f.pause_ms)} | ${ms(m.clientWorst)} | ${f.state_bytes} | ${f.program_bytes_sent} |`);
  });
  const med = (field: string) => median(col(field));
  const worst = median(moves.map((m) => m.clientWorst));
  lines.push(`| **median** | ${ms(med('quiesce_ms'))} | ${ms(med('snapshot_ms'))} | ${ms(med('copy_ms'))} | ${ms(med('start_ms'))} | **${ms(med('total_ms'))}** | **${ms(med('pause_ms'))}** | ${ms(worst)} | ${med('state_bytes')} | ${med('program_bytes_sent')} |`);
  lines.push(`| paper (1993) | | ${PAPER.snapshot_ms} | ${PAPER.copy_ms} | | ${PAPER.total_ms} | | | | |`);
  const markdown = [
    '## bench/migrate — rdict with 1,000 words moved 10 times between two daemons on loopback',
    '',
    `Machine: ${machine()}. Command: \`node dist/bench/migrate.js\`. A client looks words up in a closed loop throughout; "client worst" is the longest lookup it saw during that move. Moves alternate A→B and B→A, \`--grace 1\`. The first move to each host ships the program (fixtures/, ${col('program_bytes_sent')[0]} bytes); later moves find it in the destination's cache.`,
    '',
    ...lines,
    '',
    `Median total ${ms(med('total_ms'))} ms = ${(med('total_ms') / PAPER.total_ms).toFixed(3)} × the paper's 930 ms; median pause ${ms(med('pause_ms'))} ms.`,
  ].join('\n');
  console.log(markdown);
  writeSection('migrate', markdown);
}

void main().catch((error: Error) => {
  console.error(error);
  process.exitCode = 1;
});
