// Failpoints: named places in the migration protocol where a test makes a fault happen, as
// etcd's gofail and CRIU's CRIU_FAULT do. Inert unless RPCMIG_FAILPOINTS names them, e.g.
// RPCMIG_FAILPOINTS=commit.before=crash,copy.after=stop. Every name is listed here. Servers a
// daemon starts inherit its environment, so one variable reaches the moved server too.
// Actions: crash (SIGKILL), hang (the step never ends; the process runs on), stop (SIGSTOP:
// the whole process freezes, sockets open, until a SIGCONT), error (the step fails), slow (the
// step takes a second longer, once); and where bytes leave a process, drop (the connection is
// closed) and corrupt (a byte is flipped).
export const FAILPOINTS = [
  'order.after', // source daemon: the order is taken (the server marked migrating), the destination not yet asked
  'rewalk.after', // source daemon: the walk of a program it shipped before listed and hashed the tree; its id not yet compared
  'prepare.after', // source daemon: the program is at the destination, the server not yet signalled
  'signal.after', // source daemon: the server was signalled
  'copy.send', // source daemon: a piece of the state file is about to leave (also drop, corrupt)
  'copy.after', // source daemon: the state file is at the destination
  'start.after', // source daemon: the destination serves, the source has not committed
  'commit.before', // source daemon: about to tell its server the move is final
  'commit.after', // source daemon: its server was told; the forwarding entry is not yet written
  'forward.after', // source daemon: the forwarding entry is written; the destination not yet told of the commit
  'cleanup.before', // source daemon: the move is over; its spool (order, state file) not yet removed
  'quiesce.before', // source server: it took the order and holds new calls; those executing have not been waited for
  'snapshot.after', // source server: its snapshot is written (a small one: sent in its report), not yet reported (answered)
  'retire.before', // source server: its grace period is over; it has not stopped serving MOVED nor exited
  'arrive.copy.after', // destination daemon: the state file is whole, the server not yet started
  'arrive.start.before', // destination daemon: the start came; the standby not yet told to go on, no cold start yet
  'restore.after', // destination server: its state is restored, it has not registered
  'arrive.start.after', // destination daemon: the moved server registered, the source not yet told
  'arrive.commit.before', // destination daemon: the source's commit came, not yet recorded
  'arrive.cleanup.before', // destination daemon: the commit is recorded; its spool (arrival record) not yet removed
] as const;

export type Failpoint = (typeof FAILPOINTS)[number];
export type FaultAction = 'crash' | 'hang' | 'stop' | 'error' | 'slow' | 'drop' | 'corrupt';
const ACTIONS: readonly string[] = ['crash', 'hang', 'stop', 'error', 'slow', 'drop', 'corrupt'];
/** Where bytes leave a process: only these take drop and corrupt, which their caller applies. */
const WIRE_POINTS: readonly string[] = ['copy.send'];

/** Parses RPCMIG_FAILPOINTS; an unknown name or action is an error, so a typo never goes unnoticed. */
export function parseFailpoints(text = ''): Map<Failpoint, FaultAction> {
  const active = new Map<Failpoint, FaultAction>();
  for (const item of text.split(',').map((part) => part.trim()).filter(Boolean)) {
    const [name, action] = item.split('=');
    if (!(FAILPOINTS as readonly string[]).includes(name) || !ACTIONS.includes(action)) {
      throw new Error(`RPCMIG_FAILPOINTS: ${JSON.stringify(item)} is not NAME=crash|hang|stop|error|slow|drop|corrupt with NAME one of ${FAILPOINTS.join(', ')}`);
    }
    if ((action === 'drop' || action === 'corrupt') && !WIRE_POINTS.includes(name)) {
      throw new Error(`RPCMIG_FAILPOINTS: ${action} applies where bytes are sent: ${WIRE_POINTS.join(', ')}; not ${name}`);
    }
    active.set(name as Failpoint, action as FaultAction);
  }
  return active;
}

const active = parseFailpoints(process.env.RPCMIG_FAILPOINTS);

/**
 * Does nothing unless `name` is active: then the process dies, freezes, hangs, or the step
 * fails or is slow; or, once, it returns drop or corrupt for the caller to do to the bytes it sends.
 */
export async function failpoint(name: Failpoint, log: (line: string) => void): Promise<'drop' | 'corrupt' | undefined> {
  const action = active.get(name);
  if (action === undefined) return undefined;
  log(`failpoint ${name}: ${action}`);
  if (action === 'drop' || action === 'corrupt') {
    active.delete(name);
    return action;
  }
  if (action === 'crash') process.kill(process.pid, 'SIGKILL');
  if (action === 'stop') {
    // Once: a process continued after a freeze goes on as the frozen host would.
    active.delete(name);
    process.kill(process.pid, 'SIGSTOP');
    return undefined;
  }
  if (action === 'slow') {
    active.delete(name);
    await new Promise((resolve) => setTimeout(resolve, 1000));
    return undefined;
  }
  if (action === 'hang') {
    // Once: the step that hangs never ends, and a later move through the process goes on.
    active.delete(name);
    await new Promise(() => undefined);
  }
  throw new Error(`failpoint ${name}`);
}
