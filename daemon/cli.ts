#!/usr/bin/env node
// The `rpcmig` command (DESIGN §4): one function per command, one table of exit codes, and
// one place that turns an error into a message and an exit code.
import { randomBytes } from 'node:crypto';
import { closeSync, fchmodSync, openSync, writeSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { connect, invoke } from '../runtime/client.js';
import { closeInspectorSignal } from '../runtime/server.js';
import { DEFAULT_DAEMON_PORT, formatAddress, loadKey, openDaemon, parseAddress, type Address, type DaemonLink } from '../runtime/daemonlink.js';
import { RpcmigError, type ErrorCode } from '../runtime/errors.js';
import { startDaemon } from './daemon.js';
import { MAX_SPARES } from './launch.js';
import { MAX_BLANKS } from './blanks.js';
import { breakdownTable, checkBreakdown, checkListing, JSON_RULE, listingTable, toJson } from './output.js';
import type { Progress } from './progress.js';
import { EXIT, USAGE } from './usage.js';

type Values = Record<string, string | boolean | undefined>;

interface Command {
  options: NonNullable<ParseArgsConfig['options']>;
  run(values: Values, positionals: string[]): Promise<number>;
}

/** Bad usage: reported with the command's usage, exit 2. */
class UsageError extends Error {}

const KEY_FILE = { 'key-file': { type: 'string' } } as const;
const DAEMON = { daemon: { type: 'string' }, json: { type: 'boolean' }, ...KEY_FILE } as const;

const COMMANDS: Record<string, Command> = {
  daemon: {
    options: { listen: { type: 'string' }, advertise: { type: 'string' }, dir: { type: 'string' }, spares: { type: 'string' }, blanks: { type: 'string' }, ...KEY_FILE },
    run: runDaemon,
  },
  keygen: { options: { force: { type: 'boolean' } }, run: runKeygen },
  ls: { options: DAEMON, run: runLs },
  call: { options: DAEMON, run: runCall },
  migrate: { options: { to: { type: 'string' }, grace: { type: 'string' }, ...DAEMON }, run: runMigrate },
};

/** Exit codes of RpcmigError codes; any other code means the request failed otherwise. */
const EXIT_BY_CODE: Partial<Record<ErrorCode, number>> = {
  NO_DAEMON: EXIT.noDaemon,
  AUTH_FAILED: EXIT.auth,
  NO_SUCH_SERVER: EXIT.noServer,
  NO_SUCH_METHOD: EXIT.noMethod,
  APP_ERROR: EXIT.appError,
  MIGRATION_FAILED: EXIT.migrationFailed,
};

/** `source` names where the text came from (a flag or a variable) in the usage error. */
function address(text: string, source: string): Address {
  try {
    return parseAddress(text, DEFAULT_DAEMON_PORT);
  } catch (error) {
    throw new UsageError(`${source}: ${(error as Error).message}`);
  }
}

function daemonAddress(values: Values): string {
  if (values.daemon !== undefined) return formatAddress(address(values.daemon as string, '--daemon'));
  return formatAddress(address(process.env.RPCMIG_DAEMON ?? '127.0.0.1:4111', 'RPCMIG_DAEMON'));
}

/** A positive integer from the environment, for the daemon's tuning knobs. */
function envNumber(name: string): number | undefined {
  const text = process.env[name];
  if (text === undefined || text === '') return undefined;
  if (!/^\d+$/.test(text) || Number(text) <= 0) throw new UsageError(`${name} must be a positive integer; got ${JSON.stringify(text)}`);
  return Number(text);
}

/** A count option of the daemon (`--spares`, `--blanks`), from 0 to `max`. */
function count(option: string, text: string | undefined, max: number): number | undefined {
  if (text === undefined) return undefined;
  if (!/^\d+$/.test(text) || Number(text) > max) throw new UsageError(`${option} must be an integer from 0 to ${max}; got ${JSON.stringify(text)}`);
  return Number(text);
}

function log(line: string): void {
  process.stderr.write(`rpcmig daemon: ${line}\n`);
}

async function runDaemon(values: Values, positionals: string[]): Promise<number> {
  if (positionals.length > 0) throw new UsageError(`daemon takes no arguments; got ${JSON.stringify(positionals[0])}`);
  const listen = address((values.listen as string | undefined) ?? '127.0.0.1:4111', '--listen');
  const advertise = values.advertise === undefined ? undefined : address(values.advertise as string, '--advertise');
  const dir = resolve((values.dir as string | undefined) ?? join(homedir(), '.rpcmig'));
  const options = {
    listen, advertise, dir, log, spares: count('--spares', values.spares as string | undefined, MAX_SPARES),
    blanks: count('--blanks', values.blanks as string | undefined, MAX_BLANKS),
    handshakeTimeout: envNumber('RPCMIG_HANDSHAKE_TIMEOUT_MS'),
    maxFrame: envNumber('RPCMIG_MAX_FRAME'),
    pidCheckInterval: envNumber('RPCMIG_PID_CHECK_MS'),
    maxConnectionsPerPeer: envNumber('RPCMIG_MAX_CONNECTIONS_PER_PEER'),
  };
  const keyFile = (values['key-file'] as string | undefined) ?? process.env.RPCMIG_KEY_FILE;
  const key = loadKey(keyFile);
  closeInspectorSignal(log);
  // Listened for before the listening line goes out, so that whoever reads it may stop us.
  const stopSignal = new Promise<string>((done) => {
    process.once('SIGINT', () => done('SIGINT'));
    process.once('SIGTERM', () => done('SIGTERM'));
  });
  const daemon = await startDaemon({ ...options, key, keyFile: keyFile && resolve(keyFile) }).catch((error: NodeJS.ErrnoException) => {
    const why = error.code === 'EADDRINUSE' ? 'the address is in use' : error.message;
    throw new Error(error.syscall === 'listen' ? `cannot listen on ${formatAddress(listen)}: ${why}` : why);
  });
  const bound = formatAddress(daemon.address);
  const advertised = daemon.advertised === bound ? '' : `, advertised as ${daemon.advertised}`;
  process.stdout.write(`rpcmig daemon listening on ${bound}${advertised} (spool ${dir})\n`);
  log(`stopping (${await stopSignal})`);
  await daemon.close();
  return EXIT.ok;
}

async function runKeygen(values: Values, positionals: string[]): Promise<number> {
  if (positionals.length !== 1) throw new UsageError('keygen takes one FILE');
  const [file] = positionals;
  let fd: number;
  try {
    fd = openSync(file, values.force ? 'w' : 'wx', 0o600);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') throw new Error(`${file} already exists; pass --force to replace it`);
    throw new Error(`cannot write ${file}: ${(error as Error).message}`);
  }
  try {
    fchmodSync(fd, 0o600); // a file replaced with --force keeps its old mode otherwise
    writeSync(fd, randomBytes(32).toString('hex') + '\n');
  } finally {
    closeSync(fd);
  }
  process.stdout.write(`wrote a new cluster key to ${file} (mode 0600); copy it to every host\n`);
  return EXIT.ok;
}

async function withDaemon<T>(values: Values, use: (link: DaemonLink) => Promise<T>): Promise<T> {
  const where = daemonAddress(values);
  const link = await openDaemon(where, loadKey(values['key-file'] as string | undefined));
  try {
    return await use(link);
  } finally {
    link.close();
  }
}

async function runLs(values: Values, positionals: string[]): Promise<number> {
  if (positionals.length > 0) throw new UsageError(`ls takes no arguments; got ${JSON.stringify(positionals[0])}`);
  const where = daemonAddress(values);
  const listing = checkListing(await withDaemon(values, (link) => link.call('ls', [])), where);
  process.stdout.write(values.json ? JSON.stringify(listing) + '\n' : listingTable(listing, where));
  return EXIT.ok;
}

function jsonArgument(text: string, index: number): unknown {
  try {
    return JSON.parse(text);
  } catch {
    throw new UsageError(`argument ${index} is not JSON: ${text} (a string needs quotes: '"${text}"')`);
  }
}

type Procedures = Record<string, (...params: unknown[]) => unknown>;

async function runCall(values: Values, positionals: string[]): Promise<number> {
  if (positionals.length < 2) throw new UsageError('call needs NAME and PROC');
  const [name, proc, ...texts] = positionals;
  const params = texts.map((text, index) => jsonArgument(text, index + 1));
  const client = await connect<Procedures>(name, { daemon: daemonAddress(values), keyFile: values['key-file'] as string | undefined });
  try {
    const result = await invoke(client, proc, ...params);
    process.stdout.write(toJson(result, values.json === true) + '\n');
  } finally {
    await client.close();
  }
  return EXIT.ok;
}

async function runMigrate(values: Values, positionals: string[]): Promise<number> {
  if (positionals.length !== 1) throw new UsageError('migrate takes one NAME');
  if (values.to === undefined) throw new UsageError('migrate needs --to HOST[:PORT], the destination daemon');
  const to = formatAddress(address(values.to as string, '--to'));
  const grace = values.grace === undefined ? 60 : Number(values.grace);
  if (!Number.isFinite(grace) || grace < 0) throw new UsageError(`--grace takes seconds >= 0; got ${JSON.stringify(values.grace)}`);
  const request = { name: positionals[0], to, graceMs: Math.round(grace * 1000) };
  const breakdown = checkBreakdown(await withDaemon(values, (link) => {
    // A copy that runs long shows its progress, on a terminal only; the line is cleared after.
    if (process.stderr.isTTY) link.onNotification((method, [progress]) => method === 'progress' && showProgress(progress));
    return link.call('migrate', [request]).finally(() => shown && process.stderr.write('\r\x1b[K'));
  }));
  process.stdout.write(values.json ? JSON.stringify(breakdown) + '\n' : breakdownTable(positionals[0], breakdown));
  return EXIT.ok;
}

let shown = false;

function showProgress(value: unknown): void {
  const { step, sent, total, elapsed_ms: elapsed } = (value ?? {}) as Partial<Progress>;
  if (typeof sent !== 'number' || typeof total !== 'number' || typeof elapsed !== 'number') return;
  const mb = (bytes: number) => (bytes / 2 ** 20).toFixed(1);
  const rate = elapsed > 0 ? sent / 2 ** 20 / (elapsed / 1000) : 0;
  process.stderr.write(`\r\x1b[K${step}: ${mb(sent)} of ${mb(total)} MB sent, ${rate.toFixed(0)} MB/s`);
  shown = true;
}

function helpFor(name: string): string {
  const text = USAGE[name];
  return name === 'call' ? `${text}\n${JSON_RULE}\n` : text;
}

/** Prints what went wrong; returns the exit code. */
function report(name: string, error: unknown): number {
  const prefix = name ? `rpcmig ${name}` : 'rpcmig';
  if (error instanceof UsageError) {
    process.stderr.write(`${prefix}: ${error.message}\n\n${helpFor(name)}`);
    return EXIT.usage;
  }
  if (error instanceof RpcmigError) {
    process.stderr.write(`${prefix}: ${error.code}: ${error.message}\n`);
    return EXIT_BY_CODE[error.code] ?? EXIT.failed;
  }
  process.stderr.write(`${prefix}: ${error instanceof Error ? error.message : String(error)}\n`);
  return EXIT.other;
}

function parse(command: Command, args: string[]): { values: Values; positionals: string[] } {
  const options = { ...command.options, help: { type: 'boolean', short: 'h' } } as const;
  try {
    return parseArgs({ args, options, allowPositionals: true, strict: true });
  } catch (error) {
    // parseArgs appends advice on `--` that reads oddly here; its first sentence is the point.
    throw new UsageError((error as Error).message.split('. ')[0]);
  }
}

export async function main(argv: string[]): Promise<number> {
  const [name = '', ...args] = argv;
  if (name === '--help' || name === '-h') {
    process.stdout.write(USAGE['']);
    return EXIT.ok;
  }
  const command = Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined;
  if (!command) {
    const why = name === '' ? 'no command given' : `unknown command ${JSON.stringify(name)}`;
    return report('', new UsageError(why));
  }
  try {
    const { values, positionals } = parse(command, args);
    if (values.help) {
      process.stdout.write(helpFor(name));
      return EXIT.ok;
    }
    return await command.run(values, positionals);
  } catch (error) {
    return report(name, error);
  }
}

if (require.main === module) {
  // A command is over when main resolves: a timer left behind by a library must not keep the
  // user waiting. (stdout and stderr are synchronous for files, pipes and terminals on Linux.)
  void main(process.argv.slice(2)).then((code) => process.exit(code));
}
