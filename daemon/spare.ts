// A spare (DESIGN §3 step 2): a Node process a daemon starts before any move, so that a move's
// standby does not wait for Node's start-up. It loads nothing of the daemon's rpcmig — a
// program's own copy of the runtime is the one its standby runs — and waits, blocking one
// thread, for one line of JSON on its standard input (launch.ts, SpareJob): the script to run,
// its arguments, working directory and environment. It then runs that script as Node would
// have run it, and its standard input is the script's. A closed pipe (its daemon went away)
// ends it.
//
// Named a standby bootstrap to preload (that of the program that last arrived on its host,
// which is likely to move here again), it loads and warms that copy of the runtime meanwhile
// (runtime/standby.ts, `prepare`); a job for the same bootstrap then starts warm.
//   node spare.js [STANDBY]     with RPCMIG_SPARE=<token>
import { read } from 'node:fs';
import Module from 'node:module';
import type { SpareJob } from './launch.js';

/** A job is a few hundred bytes; more than this is no job. */
const MOST = 1 << 20;

/** The job; null when the pipe closed first (its daemon went away). */
function readJob(): Promise<SpareJob | null> {
  const chunks: Buffer[] = [];
  let size = 0;
  return new Promise((resolve, reject) => {
    const next = () => read(0, Buffer.alloc(65536), 0, 65536, null, (error, count, buffer) => {
      if (error) return reject(error);
      if (count === 0) return resolve(null);
      chunks.push(buffer.subarray(0, count));
      size += count;
      // The daemon writes nothing more until the job has started: the line is all there is.
      if (buffer[count - 1] === 0x0a) {
        try {
          return resolve(checkJob(JSON.parse(Buffer.concat(chunks).toString('utf8'))));
        } catch (error) {
          return reject(error);
        }
      }
      if (size > MOST) return reject(new Error(`no line within ${MOST} bytes`));
      next();
    });
    next();
  });
}

function checkJob(job: SpareJob): SpareJob {
  const strings = (value: unknown) => Array.isArray(value) && value.every((item) => typeof item === 'string');
  if (typeof job?.script !== 'string' || !strings(job.argv) || typeof job.cwd !== 'string' || typeof job.title !== 'string' || typeof job.env !== 'object' || job.env === null || !strings(Object.values(job.env))) {
    throw new Error('a job names script, argv, cwd, env and title');
  }
  return job;
}

/** What a standby bootstrap exports (runtime/standby.ts). */
interface Standby {
  /** `ahead`: no move is under way, so the warm-up may be thorough (an older runtime ignores it). */
  prepare(ahead?: boolean): Promise<void>;
  run(): void;
}

/** Loads and warms the standby bootstrap `script`; a spare that cannot ends, and its daemon starts the next without. */
async function preload(script: string | undefined): Promise<Standby | undefined> {
  if (script === undefined) return undefined;
  try {
    const standby = require(script) as Partial<Standby>;
    if (typeof standby.prepare !== 'function' || typeof standby.run !== 'function') throw new Error(`${script} exports no prepare and run`);
    await standby.prepare(true);
    return standby as Standby;
  } catch (error) {
    process.stderr.write(`rpcmig spare: cannot preload ${script}: ${(error as Error).message}\n`);
    process.exit(1);
  }
}

const [script] = process.argv.slice(2);
const preloaded = preload(script);

readJob().then(async (job) => {
  if (job === null) process.exit(0);
  // What `ps` shows, in the room the spare's own command line leaves: the move it runs.
  process.title = job.title;
  Object.assign(process.env, job.env);
  process.chdir(job.cwd);
  process.argv = [process.argv[0], job.script, ...job.argv];
  const standby = job.script === script ? await preloaded : undefined;
  if (standby) standby.run();
  else (Module as unknown as { runMain(): void }).runMain();
}, (error: Error) => {
  process.stderr.write(`rpcmig spare: ${error.message}\n`);
  process.exit(1);
});
