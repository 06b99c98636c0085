// Failpoints: named places in the migration protocol where a test makes a fault happen, as
// etcd's gofail and CRIU's CRIU_FAULT do. Inert unless RPCMIG_FAILPOINTS names them, e.g.
// RPCMIG_FAILPOINTS=commit.before=crash,copy.after=hang. Every name is listed here.
export const FAILPOINTS = [
  'prepare.after', // source daemon: the program is at the destination, the server not yet signalled
  'signal.after', // source daemon: the server was signalled
  'copy.after', // source daemon: the state file is at the destination
  'start.after', // source daemon: the destination serves, the source has not committed
  'commit.before', // source daemon: about to tell its server the move is final
  'commit.after', // source daemon: its server was told; the forwarding entry is not yet written
] as const;

export type Failpoint = (typeof FAILPOINTS)[number];
export type FaultAction = 'crash' | 'hang' | 'error';
const ACTIONS: readonly string[] = ['crash', 'hang', 'error'];

/** Parses RPCMIG_FAILPOINTS; an unknown name or action is an error, so a typo never goes unnoticed. */
export function parseFailpoints(text = ''): Map<Failpoint, FaultAction> {
  const active = new Map<Failpoint, FaultAction>();
  for (const item of text.split(',').map((part) => part.trim()).filter(Boolean)) {
    const [name, action] = item.split('=');
    if (!(FAILPOINTS as readonly string[]).includes(name) || !ACTIONS.includes(action)) {
      throw new Error(`RPCMIG_FAILPOINTS: ${JSON.stringify(item)} is not NAME=crash|hang|error with NAME one of ${FAILPOINTS.join(', ')}`);
    }
    active.set(name as Failpoint, action as FaultAction);
  }
  return active;
}

const active = parseFailpoints(process.env.RPCMIG_FAILPOINTS);

/** Does nothing unless `name` is active: then the process dies, hangs, or the step fails. */
export async function failpoint(name: Failpoint, log: (line: string) => void): Promise<void> {
  const action = active.get(name);
  if (action === undefined) return;
  log(`failpoint ${name}: ${action}`);
  if (action === 'crash') process.kill(process.pid, 'SIGKILL');
  if (action !== 'error') await new Promise(() => undefined);
  throw new Error(`failpoint ${name}`);
}
