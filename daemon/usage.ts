// The CLI's help texts and exit codes: what `rpcmig --help` promises, kept in one place.
import { DEFAULT_HANDSHAKE_TIMEOUT } from '../runtime/handshake.js';
import { DEFAULT_MAX_FRAME } from '../runtime/wire.js';
import { DEFAULT_MAX_CONNECTIONS_PER_PEER } from './daemon.js';
import { DEFAULT_SPARES, MAX_SPARES } from './launch.js';
import { DEFAULT_BLANKS, MAX_BLANKS } from './blanks.js';

export const EXIT = {
  ok: 0,
  other: 1,
  usage: 2,
  noDaemon: 3,
  auth: 4,
  noServer: 5,
  noMethod: 6,
  appError: 7,
  failed: 8,
  migrationFailed: 9,
} as const;

const KEY_OPTION = '  --key-file FILE        the cluster key (default: RPCMIG_KEY_FILE)';
const DAEMON_OPTION = '  --daemon HOST[:PORT]   the daemon to ask (default: RPCMIG_DAEMON, then 127.0.0.1:4111)';
const HELP_OPTION = '  -h, --help             show this help';

/** Help per command; '' is `rpcmig --help`. */
export const USAGE: Record<string, string> = {
  '': `Usage: rpcmig COMMAND [OPTIONS]

Live migration of RPC servers with their state. A daemon on every host names the
servers that live there; clients find them through it.

Commands:
  daemon   run this host's daemon in the foreground
  keygen   write a new cluster key file
  ls       list the servers registered on a daemon
  call     call a procedure of a server found by name
  migrate  move a server, with its state, to another host's daemon

Run 'rpcmig COMMAND --help' for the options of a command. Commands that talk to a
daemon need the cluster key: --key-file FILE, or RPCMIG_KEY_FILE.

Exit codes:
  0  success
  1  failed for another reason (the message says why)
  2  bad usage
  3  no daemon answered at the address
  4  no usable cluster key, or the daemon refused it
  5  no server of that name on the daemon
  6  no procedure of that name on the server
  7  the procedure threw (application error)
  8  the request failed otherwise (connection lost, time-out, bad request)
  9  the migration failed; the message names the step, and the server serves on
     where it was
`,
  daemon: `Usage: rpcmig daemon [--listen HOST:PORT] [--advertise HOST:PORT] [--dir DIR] [--spares N] [--blanks N] [--key-file FILE]

Runs this host's daemon in the foreground until SIGINT or SIGTERM. Every connection
must prove it holds the cluster key before anything else is read. Prints one line
when listening, then logs one line per event to stderr.

Options:
  --listen HOST:PORT     where to listen (default: 127.0.0.1:4111; port 0 picks a free one)
  --advertise HOST:PORT  the address other hosts and clients use (default: the listening one)
  --dir DIR              the spool, created mode 0700 (default: ~/.rpcmig)
  --spares N             Node processes kept started, 0 to ${MAX_SPARES}, so that a server moving
                         here does not wait for Node to start (default: ${DEFAULT_SPARES})
  --blanks N             empty files kept in the spool, 0 to ${MAX_BLANKS}, and a quarter as many empty
                         directories, so that a program's first move here writes its files and
                         builds its tree without creating them (default: ${DEFAULT_BLANKS})
${KEY_OPTION}
${HELP_OPTION}

Environment:
  RPCMIG_HANDSHAKE_TIMEOUT_MS  time a connection has to authenticate (default: ${DEFAULT_HANDSHAKE_TIMEOUT})
  RPCMIG_MAX_FRAME             largest message after authenticating, in bytes (default: ${DEFAULT_MAX_FRAME})
  RPCMIG_PID_CHECK_MS          how often registered pids are checked (default: 1000)
  RPCMIG_MAX_CONNECTIONS_PER_PEER  connections one host may hold open (default: ${DEFAULT_MAX_CONNECTIONS_PER_PEER})
`,
  keygen: `Usage: rpcmig keygen FILE [--force]

Writes a new random cluster key (32 bytes, hex) to FILE, mode 0600. Copy the same
file to every host; a key file that group or others can read is refused.

Options:
  --force                replace FILE if it exists
${HELP_OPTION}
`,
  ls: `Usage: rpcmig ls [--daemon HOST[:PORT]] [--json] [--key-file FILE]

Lists the servers registered on a daemon, and its forwarding entries.

Options:
${DAEMON_OPTION}
  --json                 print {"servers":[{"name","pid","address","state"}],"forwards":[{"name","to"}]}
${KEY_OPTION}
${HELP_OPTION}
`,
  call: `Usage: rpcmig call NAME PROC [ARG ...] [--daemon HOST[:PORT]] [--json] [--key-file FILE]

Finds the server NAME through the daemon, calls its procedure PROC and prints the
result as JSON. Each ARG is one JSON value: 42, '"apple"', '{"a":[1,2]}'. Put --
before the arguments when one starts with '-'.

Options:
${DAEMON_OPTION}
  --json                 print the result on one line
${KEY_OPTION}
${HELP_OPTION}
`,
  migrate: `Usage: rpcmig migrate NAME --to HOST[:PORT] [--grace SECONDS] [--daemon HOST[:PORT]] [--json] [--key-file FILE]

Moves the server NAME, with its @migrate state, from the daemon it is registered on
to the daemon at --to, and waits. Calls that arrive during the move are held and
answered MOVED the moment the new server serves; rpcmig clients follow by
themselves. Prints the time each step took (DESIGN §7); exits 0 once the new
server answered. On failure the server serves on where it was, and the message
names the step that failed and why (exit 9).

Options:
  --to HOST[:PORT]       the destination daemon (required)
  --grace SECONDS        how long the old address answers MOVED before the old
                         process exits (default: 60)
${DAEMON_OPTION}
  --json                 print {"quiesce_ms","snapshot_ms","copy_ms","start_ms","total_ms",
                         "pause_ms","state_bytes","program_bytes_sent","from","to","address",
                         "stopped_at","answered_at"}: the last two are the pause's ends,
                         the server's stop and the new host's first reply, in ms on the
                         source host's monotonic clock (process.hrtime)
${KEY_OPTION}
${HELP_OPTION}
`,
};
