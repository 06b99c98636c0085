// The name service (the paper's portmapper role): which servers live on this host, and
// where the ones that moved away went. Bookkeeping only; daemon.ts does the network I/O and
// logs, forwards.ts keeps the forwarding entries on disk.
import { RpcmigError } from '../runtime/errors.js';
import { formatAddress, parseAddress } from '../runtime/daemonlink.js';

/**
 * `migrating` from the signal to commit or abort; `moved` during the grace period after;
 * `arriving` for a moved server registering with a daemon that restarted before it heard how
 * the move ended: it is not looked up, nor moved on, until the source says.
 */
export type ServerState = 'serving' | 'migrating' | 'moved' | 'arriving';

/** What a server tells its daemon when it registers. */
export interface Registration {
  name: string;
  pid: number;
  /** `host:port` the server listens on. */
  address: string;
  /** The program's entry file and arguments, and its project root: what a migration ships. */
  entry: string;
  argv: string[];
  root: string;
  /** The working directory and Node options it was started with; a moved server gets the same. */
  cwd?: string;
  execArgv?: string[];
  /** Raised by every move (see Forward.epoch); 0 for a server started afresh. */
  epoch?: number;
  /** The move a server registering again still holds its calls for. */
  migration?: string;
  /** Set by a server registering again in its grace period after a move. */
  moved?: { to: string; epoch: number };
  /** The move that started this process (set by the destination daemon that started it). */
  arrival?: string;
}

export interface Server extends Registration {
  state: ServerState;
  /** The connection that registered it: the server's control connection. */
  owner: object;
}

export interface Forward {
  name: string;
  /** The server's address after the move, `host:port`. */
  to: string;
  /** The daemon it moved to, asked when the server has moved on again. */
  daemon: string;
  /** The moved server's epoch: a server restored from an older snapshot is stale. */
  epoch: number;
  /** The move that made this entry: a destination that restarted asks whether it was committed. */
  id?: string;
}

export interface Listing {
  servers: Array<{ name: string; pid: number; address: string; state: ServerState }>;
  forwards: Array<{ name: string; to: string }>;
}

/** Names are used as file names in the spool later, so they stay plain. */
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

function badRequest(message: string): RpcmigError {
  return new RpcmigError('BAD_REQUEST', message);
}

export function checkName(value: unknown): string {
  if (typeof value !== 'string' || !NAME.test(value)) {
    throw badRequest(`a server name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit; got ${JSON.stringify(value)}`);
  }
  return value;
}

/** Whether the server's process is alive (one of another user counts: it exists). */
export function isAlive(server: Server): boolean {
  try {
    process.kill(server.pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Validates the parameter of `register`; every field is required. */
export function checkRegistration(value: unknown): Registration {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw badRequest('register takes one map: { name, pid, address, entry, argv, root }');
  }
  const { name, pid, address, entry, argv, root, cwd, execArgv, epoch, migration, moved, arrival } = value as Record<string, unknown>;
  if (!Number.isSafeInteger(pid) || (pid as number) <= 0) throw badRequest(`pid must be a positive integer; got ${JSON.stringify(pid)}`);
  if (typeof address !== 'string') throw badRequest('address must be a "host:port" string');
  let where;
  try {
    where = parseAddress(address, 0);
  } catch (error) {
    throw badRequest((error as Error).message);
  }
  if (where.port === 0) throw badRequest(`address ${address} names no port`);
  if (typeof entry !== 'string' || typeof root !== 'string') throw badRequest('entry and root must be strings');
  if (!isStrings(argv)) throw badRequest('argv must be an array of strings');
  if (cwd !== undefined && typeof cwd !== 'string') throw badRequest('cwd must be a string');
  if (execArgv !== undefined && !isStrings(execArgv)) throw badRequest('execArgv must be an array of strings');
  if (epoch !== undefined && (!Number.isSafeInteger(epoch) || (epoch as number) < 0)) throw badRequest('epoch must be an integer >= 0');
  if (migration !== undefined && !isMoveId(migration)) throw badRequest('migration must be a move id of 16 hex digits');
  if (arrival !== undefined && !isMoveId(arrival)) throw badRequest('arrival must be a move id of 16 hex digits');
  return {
    name: checkName(name), pid: pid as number, address: formatAddress(where), entry, argv, root, cwd, execArgv,
    epoch: epoch as number | undefined, migration: migration as string | undefined, moved: checkMoved(moved),
    arrival: arrival as string | undefined,
  };
}

function checkMoved(value: unknown): { to: string; epoch: number } | undefined {
  if (value === undefined) return undefined;
  const { to, epoch } = (value ?? {}) as Record<string, unknown>;
  if (typeof to !== 'string' || !Number.isSafeInteger(epoch)) throw badRequest('moved must be { to: "host:port", epoch }');
  return { to, epoch: epoch as number };
}

export function isMoveId(value: unknown): value is string {
  return typeof value === 'string' && /^[0-9a-f]{16}$/.test(value);
}

function isStrings(value: unknown): value is string[] {
  return Array.isArray(value) && value.every((item) => typeof item === 'string');
}

export class Names {
  private readonly servers = new Map<string, Server>();

  /** `where` names this daemon in error messages. */
  constructor(private readonly where: string) {}

  /**
   * Refuses a name held by another server that is still alive and not moved away: a server
   * moving back here takes its name over from its old process in the grace period.
   */
  register(registration: Registration, owner: object, isAlive: (server: Server) => boolean): Server {
    const held = this.servers.get(registration.name);
    if (held && held.owner !== owner && held.state !== 'moved' && isAlive(held)) {
      throw new RpcmigError(
        'NAME_TAKEN',
        `a server named ${JSON.stringify(held.name)} is already registered on the daemon at ${this.where} (pid ${held.pid} at ${held.address})`,
        { pid: held.pid, address: held.address },
      );
    }
    const server: Server = { ...registration, state: 'serving', owner };
    this.servers.set(server.name, server);
    return server;
  }

  /** Removes the server if it is still the one registered under its name. */
  unregister(server: Server): boolean {
    if (this.servers.get(server.name) !== server) return false;
    this.servers.delete(server.name);
    return true;
  }

  lookup(name: string): Server {
    const server = this.servers.get(name);
    if (!server) throw new RpcmigError('NO_SUCH_SERVER', `no server named ${JSON.stringify(name)} on the daemon at ${this.where}`);
    return server;
  }

  ownedBy(owner: object): Server[] {
    return [...this.servers.values()].filter((server) => server.owner === owner);
  }

  all(): Server[] {
    return [...this.servers.values()];
  }

  list(show: (server: Server) => string, forwards: Forward[]): Listing {
    const servers = this.all().map((server) => ({ name: server.name, pid: server.pid, address: show(server), state: server.state }));
    return { servers, forwards: forwards.map(({ name, to }) => ({ name, to })) };
  }
}
