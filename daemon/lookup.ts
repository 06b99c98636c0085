// The name service's answer (the paper's portmapper role; DESIGN §3 step 7): where a server is
// served — here, or, following the forwarding entry of one that moved away, wherever the daemon
// it moved to says. A server that a move brought here is found only once that move is
// committed: a call sent to it before would run before the move is final, and be lost should
// the source roll the move back.
import { openDaemon, within } from '../runtime/daemonlink.js';
import { RpcmigError } from '../runtime/errors.js';
import type { Forwards } from './forwards.js';
import type { Names, Server } from './names.js';
import { askOutcome } from './settle.js';

/** How many daemons a lookup may follow forwarding entries through. */
const MAX_HOPS = 8;

export interface LookupContext {
  names: Names;
  forwards: Forwards;
  key: Buffer;
  /** A server's own address as clients reach it. */
  reachable(address: string): string;
  /** The source daemon of the move `id` if the server it brought here started and the move is not known committed. */
  uncommitted(id: string): string | undefined;
  /** The move `id` is committed: the server it brought here serves. */
  confirm(name: string, id: string): void;
}

/** Where `name` is served, at most MAX_HOPS daemons on. */
export async function lookup(ctx: LookupContext, name: string, hops: number): Promise<{ name: string; address: string }> {
  const server = ctx.names.all().find((s) => s.name === name && s.state !== 'moved' && s.state !== 'arriving') ?? (await committedHere(ctx, name));
  if (server) return { name, address: ctx.reachable(server.address) };
  const forward = ctx.forwards.get(name);
  if (!forward) {
    const known = ctx.names.lookup(name);
    if (known.state === 'arriving') throw new RpcmigError('MIGRATING', `${name} is arriving here by a move not committed yet; ask again`);
    return { name, address: ctx.reachable(known.address) };
  }
  if (hops + 1 >= MAX_HOPS) return { name, address: forward.to };
  try {
    const link = await openDaemon(forward.daemon, ctx.key, { timeout: 2000 });
    try {
      return (await within(2000, link.call('lookup', [name, hops + 1]))) as { name: string; address: string };
    } finally {
      link.close();
    }
  } catch {
    return { name, address: forward.to };
  }
}

/**
 * The server of `name` that a move brought here, if that move is committed: asked of its
 * source when this daemon has not heard yet (its commit is on its way, or was lost).
 */
async function committedHere(ctx: LookupContext, name: string): Promise<Server | undefined> {
  const server = ctx.names.all().find((s) => s.name === name && s.state === 'arriving');
  const id = server?.arrival;
  const source = id === undefined ? undefined : ctx.uncommitted(id);
  if (!server || id === undefined || source === undefined) return undefined;
  if ((await askOutcome(ctx.key, source, id)) === 'committed') ctx.confirm(name, id);
  return server.state === 'serving' ? server : undefined;
}
