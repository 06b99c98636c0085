// What of a program's node_modules the server cannot need (DESIGN §3 step 2): the packages that
// only its devDependencies need — compilers, type definitions, test tools — which a package root
// often carries in the same node_modules as the server's dependencies. Node resolves a package
// from the real directory of the one that requires it, walking up through node_modules
// directories; the same walk here, over the dependencies, optional dependencies and peer
// dependencies of each package (optional peers left out: a package runs without them), gives
// what the server may load, at any time, through any import. A package that nothing declares
// is shipped, as is everything outside node_modules. node_modules/.cache, where tools keep what
// they can make again (ts-patch, Babel, ESLint, webpack loaders), stays behind too.
import { readFileSync } from 'node:fs';
import { basename, dirname, join, relative, sep } from 'node:path';
import { isInside, realOrUndefined } from './paths.js';

/** A package's own package.json field: `{ "rpcmig": { "shipDevDependencies": true } }` ships the whole root. */
export const OPT_OUT = 'shipDevDependencies';
// npm's package names: an optional scope, then a name; never a path of its own.
const NAME = /^(?:@[a-z0-9~-][\w.~-]*\/)?[a-z0-9~-][\w.~-]*$/i;
// Packages one walk reads at most: a tree past it is shipped whole rather than read further.
const MAX_PACKAGES = 20_000;

interface PackageJson {
  dependencies?: unknown;
  optionalDependencies?: unknown;
  peerDependencies?: unknown;
  peerDependenciesMeta?: unknown;
  devDependencies?: unknown;
  rpcmig?: unknown;
}

/** Where tools keep their caches in a package root (the `find-cache-dir` convention). */
export const TOOL_CACHE = join('node_modules', '.cache');

/**
 * What of the real directory `root` stays behind when its program moves: TOOL_CACHE, and the
 * real directories, inside `root`, of the packages that only the root's devDependencies need
 * (see devOnlyPackages). Nothing when the root opts out (OPT_OUT).
 */
export function leftBehind(root: string, watch?: (dir: string) => void): string[] {
  watch?.(root);
  const manifest = readPackage(root);
  if ((manifest?.rpcmig as Record<string, unknown> | undefined)?.[OPT_OUT] === true) return [];
  return [join(root, TOOL_CACHE), ...(manifest ? devOnlyPackages(root, manifest, watch) : [])];
}

/**
 * The real directories, inside `root`, of the packages that only the devDependencies of its
 * package.json (`manifest`) need: none when it declares none. `watch` is told each package's
 * directory before its package.json is read: a change to one changes what is left out.
 */
function devOnlyPackages(root: string, manifest: PackageJson, watch?: (dir: string) => void): string[] {
  const dev = names(manifest.devDependencies);
  if (dev.length === 0) return [];
  const graph = new Graph(root, watch);
  const needed = graph.closure(root, runtimeNames(manifest));
  const devOnly = new Set([...graph.closure(root, dev)].filter((dir) => !needed.has(dir) && inNodeModules(root, dir)));
  if (graph.overflowed) return [];
  // A needed package inside a left-out one (reached through a link) keeps it.
  for (const kept of needed) for (let dir = dirname(kept); dir !== root && isInside(root, dir); dir = dirname(dir)) devOnly.delete(dir);
  return [...devOnly];
}

class Graph {
  private readonly packages = new Map<string, PackageJson | undefined>();
  overflowed = false;

  constructor(private readonly root: string, private readonly watch?: (dir: string) => void) {}

  /** Every package (real directory) reached from `from` through `start` and their runtime dependencies. */
  closure(from: string, start: string[]): Set<string> {
    const reached = new Set<string>();
    const queue: Array<[string, string[]]> = [[from, start]];
    while (queue.length > 0 && !this.overflowed) {
      const [dir, wanted] = queue.pop()!;
      for (const name of wanted) {
        const found = this.resolve(dir, name);
        if (found === undefined || reached.has(found)) continue;
        reached.add(found);
        queue.push([found, runtimeNames(this.read(found))]);
      }
    }
    return reached;
  }

  /** Node's lookup of `name` from the package at `dir`, within the root: the real directory, or undefined. */
  private resolve(dir: string, name: string): string | undefined {
    for (let at = dir; isInside(this.root, at); at = dirname(at)) {
      if (basename(at) === 'node_modules') continue;
      const real = realOrUndefined(join(at, 'node_modules', name));
      if (real !== undefined) return isInside(this.root, real) ? real : undefined;
      if (at === this.root) break;
    }
    return undefined;
  }

  private read(dir: string): PackageJson {
    if (!this.packages.has(dir)) {
      if (this.packages.size >= MAX_PACKAGES) this.overflowed = true;
      this.watch?.(dir);
      this.packages.set(dir, readPackage(dir));
    }
    return this.packages.get(dir) ?? {};
  }
}

/** The names a package needs at run time: its dependencies, optional dependencies, and peers not marked optional. */
function runtimeNames(manifest: PackageJson): string[] {
  const meta = (manifest.peerDependenciesMeta ?? {}) as Record<string, { optional?: unknown } | undefined>;
  const peers = names(manifest.peerDependencies).filter((name) => meta[name]?.optional !== true);
  return [...names(manifest.dependencies), ...names(manifest.optionalDependencies), ...peers];
}

function names(field: unknown): string[] {
  if (field === null || typeof field !== 'object' || Array.isArray(field)) return [];
  return Object.keys(field).filter((name) => NAME.test(name));
}

function readPackage(dir: string): PackageJson | undefined {
  try {
    const parsed: unknown = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
    return parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed) ? (parsed as PackageJson) : undefined;
  } catch {
    return undefined;
  }
}

function inNodeModules(root: string, dir: string): boolean {
  return relative(root, dir).split(sep).includes('node_modules');
}
