// What a source daemon knows of the programs it ships: the id each program root had at its
// last move, how long listing its tree took, and the thread that walks the trees (walker.ts).
import { realpath } from 'node:fs/promises';
import { relative } from 'node:path';
import { failpoint } from '../runtime/failpoints.js';
import type { Server } from './names.js';
import { realOrUndefined } from './paths.js';
import type { ShipmentHead } from './shipment.js';
import type { Manifest } from './transfer.js';
import { Walker, type Walked } from './walker.js';

/**
 * A walk of a program's tree that listed it in at most this long last time may run on beside
 * the move (its files' hashes are cached: it stats them): the commit waits for it, with the
 * server paused. A longer one is waited for before the server is signalled.
 */
const OVERLAPPED_WALK_MS = 250;
// How long after it was built a program's tree is walked: past the pause of the move that
// brought it (the walking thread yields to it anyway), before a move of it onwards.
const SEED_DELAY_MS = 100;
// How long after a server registers here its program's tree is walked, unless a move walked it
// first: past the server's start-up (the walking thread yields to it anyway).
const AHEAD_DELAY_MS = 200;
// Paths of what stays behind, or comes from outside the root (packages.ts), that the log names.
const SHOWN = 5;

/** One walk of a program's tree, and what it is compared with. */
export interface Walk {
  /** The root's id at its last move, if this daemon shipped it before, else at its walk ahead of a move. */
  guess?: string;
  /** The tree, once walked. */
  walked: Promise<Walked>;
  /** The id, once walked. */
  id?: string;
  /** A walk still running may run on beside the move (see OVERLAPPED_WALK_MS). */
  mayOverlap: boolean;
}

export class Programs {
  private readonly ids = new Map<string, string>();
  /** Ids of trees walked ahead of their first move (see `ahead`). */
  private readonly aheadIds = new Map<string, string>();
  private readonly walkMs = new Map<string, number>();
  /** Trees built here from verified blobs that no walk has seen yet: their manifests and ids. */
  private readonly built = new Map<string, { manifest: Manifest; id: string }>();
  private readonly walker = new Walker();
  /** The walk of each root under way: a walk of the same root waits for it, then finds the tree clean at once. */
  private readonly walking = new Map<string, Promise<Walked>>();

  constructor(private readonly exclude: string[], private readonly log: (line: string) => void) {}

  /** Files of the trees walked here that had these hashes (Walker.filesOf): what an arriving program may take from this host. */
  filesOf(hashes: string[]): Promise<Map<string, string>> {
    return this.walker.filesOf(hashes).catch(() => new Map());
  }

  /** Walks the tree at `root` (a real path) again. */
  walk(root: string): Walk {
    const { seeded, walking } = this.walkTree(root);
    const shipped = this.ids.get(root) ?? seeded;
    const guess = shipped ?? this.aheadIds.get(root);
    const mayOverlap = (this.walkMs.get(root) ?? Infinity) <= OVERLAPPED_WALK_MS;
    const walked = walking.then(async (tree) => {
      if (shipped !== undefined) await failpoint('rewalk.after', this.log);
      this.ids.set(root, tree.id);
      walk.id = tree.id;
      return tree;
    });
    // Awaited by the move; until then a refusal must not count as unhandled.
    walked.catch(() => undefined);
    const walk: Walk = { guess, walked, mayOverlap };
    return walk;
  }

  /**
   * A program arrived here and was built at `root` from verified blobs. Its first walk takes
   * their hashes as known and stats its files instead of reading them, and a move of it starts
   * from its id; that walk comes once the move that brought it is over, or with the next move.
   */
  arrived(root: string, manifest: Manifest, id: string): void {
    const real = realOrUndefined(root);
    if (real === undefined) return; // gone already: walked, and hashed, as any tree at its next move
    this.built.set(real, { manifest, id });
    this.walkLater(real, SEED_DELAY_MS, () => this.built.get(real)?.manifest === manifest, this.ids, 'which arrived here');
  }

  /**
   * A server registered here from `root`: its tree is walked once the server's start-up is
   * over, in the walking thread, so that its first move finds the files' hashes cached and the
   * tree watched, instead of waiting for a walk that reads every file. A tree this daemon
   * walked or built already, or is walking, is left as it is.
   */
  ahead(root: string, label: string): void {
    const real = realOrUndefined(root);
    if (real === undefined) return;
    const unknown = () => !this.ids.has(real) && !this.aheadIds.has(real) && !this.built.has(real) && !this.walking.has(real);
    this.walkLater(real, AHEAD_DELAY_MS, unknown, this.aheadIds, `${label}'s program, ahead of a move`, (walked) => {
      const above = [...walked.above.keys()];
      this.log(`${label}: its program (${real}) walked ahead of a move, ${walked.manifest.entries.length} entries${listed(walked.behind, 'stays behind', 'stay behind')}${listed(above, 'package comes from outside it', 'packages come from outside it')}`);
    });
  }

  /** Walks `real` after `delayMs`, if it is still `wanted()` then, and keeps its id `into`. */
  private walkLater(real: string, delayMs: number, wanted: () => boolean, into: Map<string, string>, what: string, done?: (walked: Walked) => void): void {
    setTimeout(() => {
      if (!wanted()) return;
      this.walkTree(real).walking.then(
        (walked) => {
          into.set(real, walked.id);
          done?.(walked);
        },
        (error: Error) => this.log(`the walk of ${real}, ${what}, failed: ${error.message}`),
      );
    }, delayMs).unref();
  }

  /**
   * A walk of `root` in the walker thread, which records how long listing it took; a tree built
   * here and not walked yet is walked with the hashes it was built from, and `seeded` is its id.
   */
  private walkTree(root: string): { seeded?: string; walking: Promise<Walked> } {
    const seed = this.built.get(root);
    this.built.delete(root);
    const before = this.walking.get(root)?.catch(() => undefined) ?? Promise.resolve();
    const walking = before.then(() => this.walker.walk(root, this.exclude, (ms) => this.walkMs.set(root, ms), seed?.manifest));
    this.walking.set(root, walking);
    const done = () => void (this.walking.get(root) === walking && this.walking.delete(root));
    walking.then(done, done);
    return { seeded: seed?.id, walking };
  }

  /** Ends the thread that walks program trees. */
  close(): void {
    this.walker.close();
  }
}

/** The real path of `root`; undefined when it is gone. */
/** What the destination is told of `server`'s program, besides its content: paths relative to its root. */
export async function shipmentOf(id: string, server: Server, root: string, source: string): Promise<ShipmentHead> {
  const entry = relative(root, await realpath(server.entry));
  const cwd = server.cwd === undefined ? '' : relative(root, await realpath(server.cwd).catch(() => root));
  return { id, name: server.name, source, entry, argv: server.argv, execArgv: server.execArgv ?? [], cwd: cwd.startsWith('..') ? '' : cwd };
}

/** What of a tree stays behind, or comes from outside it (packages.ts), as a clause for the log: the first few paths, and how many. */
function listed(paths: readonly string[], one: string, many: string): string {
  if (paths.length === 0) return '';
  const shown = paths.slice(0, SHOWN).join(', ');
  return `; ${paths.length} ${paths.length === 1 ? one : many} (${shown}${paths.length > SHOWN ? ', …' : ''})`;
}
