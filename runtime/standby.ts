// A moved server's standby (DESIGN §3 step 2): the destination daemon starts this bootstrap,
// from the program's own copy of rpcmig, as soon as the program is in place — while the
// source still serves. It pays for Node's start-up, loads the runtime, authenticates to the
// daemon and learns where its state file will be; then the program's entry runs as if started
// with RPCMIG_RESTORE, loading its modules, until its first read of the state (the injected
// restore of the first @migrate variable, or serve()): that read waits, blocking, for the
// daemon's word on standard input that the file is whole. Only decoding the state, the rest
// of the program's start and its registration remain on the clients' critical path. A daemon
// that goes away before its word closes the pipe, and the standby exits. In a daemon's spare,
// Node has started before the move, and the runtime may be loaded and warm (`prepare`).
//   node standby.js ENTRY [ARG ...]     with RPCMIG_STANDBY=<migration id>, RPCMIG_DAEMON, RPCMIG_KEY_FILE
import { Console } from 'node:console';
import { readSync } from 'node:fs';
import Module from 'node:module';
import { resolve } from 'node:path';
import { Writable } from 'node:stream';
import { pathToFileURL } from 'node:url';
import { loadKey, openDaemon, parseAddress } from './daemonlink.js';
import { connect } from './client.js';
import { DEFAULT_RECORD_LEASE_MS, serve } from './server.js';
import { CompletionRecords } from './records.js';
import { gateRestore, RESTORE_ENV, STANDBY_ENV, warmCodec } from './state.js';
import { adoptLink, programRecord } from './register.js';
import { listenAhead, serverHost } from './listener.js';
import './index.js';

/** Calls a thorough warm-up makes: enough to fill and grow a client's completion records, as a served client does. */
const THOROUGH_WARM_CALLS = 300;

/**
 * Runs the code the server will run — decoding a state file, putting its clients' completion
 * records back, serving calls, writing its first line of output — before the state arrives,
 * so that V8 has compiled it instead of the clients waiting for it. `thorough`: over and over,
 * until V8 has optimised its loops (~50–100 ms of CPU), for a spare that has nothing else to
 * do; else once, as a standby started for a move under way does.
 */
async function warmUp(thorough: boolean): Promise<void> {
  warmCodec(thorough);
  const server = await serve('rpcmig-standby', { ping: () => true }, { daemon: false });
  const client = await connect<{ ping(): boolean }>(parseAddress(server.address, 0));
  const calls = thorough ? THOROUGH_WARM_CALLS : 1;
  for (let call = 0; call < calls; call++) await client.ping();
  // A restored server puts its clients' completion records back first thing (server.ts, serve).
  const saved = new CompletionRecords(DEFAULT_RECORD_LEASE_MS);
  const records = saved.hello(['rpcmig-warm-up', 0])!;
  for (let seq = 0; seq < calls; seq++) {
    records.start(seq);
    records.finish(seq, null, `result ${seq}`);
  }
  const restored = new CompletionRecords(DEFAULT_RECORD_LEASE_MS);
  restored.restore(saved.save());
  saved.close();
  restored.close();
  await client.close();
  await server.close();
  // What a server sends its daemon when it registers (its package root found on disk).
  programRecord('rpcmig-warm-up', server.address, 0);
  // A program's first line of output opens the stream (~2–5 ms cold) and runs console's code,
  // formatting included (~1.3 ms more, once the stream is open): through a console of its own
  // that writes nowhere, so that the program's log shows nothing of it.
  process.stdout.write('');
  const nowhere = new Writable({ write: (_chunk, _encoding, done) => done() });
  const quiet = new Console({ stdout: nowhere, stderr: nowhere });
  quiet.log('%s %d %j %o', 'warm', 1, { up: true }, [1]);
  quiet.error('%s', 'warm');
}

let prepared: Promise<void> | undefined;

/**
 * All a standby does before it knows its move: loading this runtime (through the ESM loader
 * too: an ES module program imports `rpcmig`, and `rpcmig/state` in the code the transformer
 * injects, through it, and it reads the export names of a CommonJS module once per process)
 * and warming it up. A daemon's spare (daemon/spare.ts) does it ahead of any move, for the
 * program that last arrived on its host: `ahead`, and so thoroughly (see `warmUp`).
 */
export function prepare(ahead = false): Promise<void> {
  prepared ??= (async () => {
    for (const module of ['./index.js', './state.js']) await import(pathToFileURL(require.resolve(module)).href);
    await warmUp(ahead);
  })();
  return prepared;
}

/** Runs the standby: `process.argv` is `[node, this script, ENTRY, ...ARGS]`; the environment names the move. */
export function run(): void {
  main().catch((error: Error) => {
    process.stderr.write(`rpcmig standby: ${error.message}\n`);
    process.exit(1);
  });
}

async function main(): Promise<void> {
  const id = process.env[STANDBY_ENV];
  const [entry, ...argv] = process.argv.slice(2);
  if (!id || !entry) throw new Error(`usage: ${STANDBY_ENV}=<id> node standby.js ENTRY [ARG ...]`);
  // The server's socket too is bound now, on the host its daemon gives it (see serve); after
  // the warm-up, whose own server would take it otherwise. Should that fail, serve() binds as
  // it would have, and says why if it cannot either.
  const [link] = await Promise.all([
    openDaemon(process.env.RPCMIG_DAEMON ?? '127.0.0.1:4111', loadKey()),
    prepare().then(() => listenAhead(serverHost()).catch(() => undefined)),
  ]);
  const { statePath } = (await link.call('standby', [id])) as { statePath: string };
  delete process.env[STANDBY_ENV];
  process.env[RESTORE_ENV] = statePath;
  gateRestore(() => {
    // Told before blocking: the program's modules are loaded, and only the state is awaited.
    // The request leaves at once (the socket is idle); its answer is read once running again.
    link.call('gate', [id]).catch(() => undefined);
    awaitGo();
  });
  adoptLink(link);
  process.argv = [process.argv[0], resolve(entry), ...argv];
  (Module as unknown as { runMain(): void }).runMain();
}

/** Blocks until the daemon writes its word on standard input; throws if the pipe closes first. */
function awaitGo(): void {
  const byte = Buffer.alloc(1);
  const pause = new Int32Array(new SharedArrayBuffer(4));
  for (let attempt = 0; attempt < 10_000_000; attempt++) {
    // Finely at first: the word usually comes within milliseconds, and every wait adds to the pause.
    const waitMs = attempt < 5000 ? 0.1 : 1;
    let read: number;
    try {
      read = readSync(0, byte, 0, 1, null);
    } catch (error) {
      // A non-blocking pipe: nothing yet.
      if ((error as NodeJS.ErrnoException).code !== 'EAGAIN') throw error;
      Atomics.wait(pause, 0, 0, waitMs);
      continue;
    }
    if (read === 0) throw new Error('the daemon went away before the state arrived');
    if (byte[0] === 0x0a) return;
  }
  throw new Error('no word from the daemon');
}

if (require.main === module) run();
