// What of a program's node_modules the server cannot need (DESIGN §3 step 2): the packages that
// only its devDependencies need — compilers, type definitions, test tools — which a package root
// often carries in the same node_modules as the server's dependencies. Node resolves a package
// from the real directory of the one that requires it, walking up through node_modules
// directories; the same walk here, over the dependencies, optional dependencies and peer
// dependencies of each package (optional peers left out: a package runs without them), gives
// what the server may load, at any time, through any import. A package that nothing declares
// is shipped, as is everything outside node_modules. node_modules/.cache, where tools keep what
// they can make again (ts-patch, Babel, ESLint, webpack loaders), stays behind too.
// The same walk, going on above the root, finds what the server loads from outside it: the
// packages that npm and Yarn workspaces hoist to the workspace's node_modules, and those that
// pnpm links from its store at the workspace's root. They travel too, placed in the shipped
// tree where Node, looking up from the package that needs each, finds the same one.
import { existsSync, readFileSync } from 'node:fs';
import { basename, dirname, join, relative, sep } from 'node:path';
import { isBelowAny, isInside, realOrUndefined } from './paths.js';

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
  if (optedOut(manifest)) return [];
  return [join(root, TOOL_CACHE), ...(manifest ? devOnlyPackages(root, manifest, watch) : [])];
}

/** Packages shipped from outside the root: each real directory by its path in the shipped tree ('/'-separated, relative to the root). */
export type Placed = ReadonlyMap<string, string>;

/** Where the file at `path` of the shipped tree is read: below the package placed at a prefix of it, or below the root. */
export function sourcePath(root: string, placed: Placed, path: string): string {
  for (let at = path; at !== ''; at = parentOf(at)) {
    const real = placed.get(at);
    if (real !== undefined) return join(real, path.slice(at.length));
  }
  return join(root, path);
}

/**
 * The packages the server needs that lie outside the real directory `root` and that the tree
 * as shipped would not hold: found from the root's package.json by Node's lookup, from each
 * package's real directory up through every node_modules above it, over runtime dependencies
 * (and the root's devDependencies too when it opts out). Each is placed where the same lookup
 * in the shipped tree, from where the package that needs it is shipped, finds it: in the
 * root's node_modules, or, where that holds another package of the name, in the node_modules
 * of the package that needs it. `behind`: the real directories left behind (leftBehind).
 * `watch` is told every node_modules above the root that a lookup reads.
 */
export function fromAbove(root: string, behind: ReadonlySet<string>, watch?: (dir: string) => void): Placed {
  const placed = new Map<string, string>();
  const manifest = readPackage(root);
  if (manifest === undefined) return placed;
  const graph = new Graph(root, watch);
  /** The real directory that the shipped path holds, or undefined when it holds nothing. */
  const sourceOf = (path: string): string | undefined => {
    const real = realOrUndefined(sourcePath(root, placed, path));
    return real !== undefined && !isBelowAny(behind, real) ? real : undefined;
  };
  /** Places `source` in the node_modules of the package shipped at `dir`, unless something is there. */
  const place = (dir: string, name: string, source: string): string | undefined => {
    const at = modulesOf(dir, name);
    if (sourceOf(at) !== undefined) return undefined;
    placed.set(at, source);
    return at;
  };
  const shipped = new Set<string>(['']);
  const start = optedOut(manifest) ? [...runtimeNames(manifest), ...names(manifest.devDependencies)] : runtimeNames(manifest);
  const queue: Array<[path: string, real: string, wanted: string[]]> = [['', root, start]];
  while (queue.length > 0 && !graph.overflowed) {
    const [path, real, wanted] = queue.pop()!;
    for (const name of wanted) {
      const source = graph.resolve(real, name, false);
      if (source === undefined) continue;
      // Found nowhere in the shipped tree: in the root's node_modules; found as another package: in the one that needs it.
      const found = lookup(path, name, sourceOf);
      const at = found === undefined ? place('', name, source) : found.real === source ? found.at : place(path, name, source);
      if (at === undefined || shipped.has(at)) continue;
      shipped.add(at);
      queue.push([at, source, runtimeNames(graph.read(source))]);
    }
  }
  return placed;
}

/** The first shipped path that Node's lookup of `name` from the package shipped at `path` finds holding something, and what it holds; if any. */
function lookup(path: string, name: string, sourceOf: (path: string) => string | undefined): { at: string; real: string } | undefined {
  for (let dir = path; ; dir = parentOf(dir)) {
    if (dir !== 'node_modules' && !dir.endsWith('/node_modules')) {
      const at = modulesOf(dir, name);
      const real = sourceOf(at);
      if (real !== undefined) return { at, real };
    }
    if (dir === '') return undefined;
  }
}

/** The shipped path of the package `name` in the node_modules of the directory at `dir`. */
function modulesOf(dir: string, name: string): string {
  return dir === '' ? `node_modules/${name}` : `${dir}/node_modules/${name}`;
}

/** The parent of a shipped path ('' for the root). */
function parentOf(path: string): string {
  return path.slice(0, Math.max(path.lastIndexOf('/'), 0));
}

function optedOut(manifest: PackageJson | undefined): boolean {
  return (manifest?.rpcmig as Record<string, unknown> | undefined)?.[OPT_OUT] === true;
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

  /**
   * Node's lookup of `name` from the package at `dir`: the real directory it finds, or
   * undefined; `within`: only inside the root, by lookups that stay inside it. The directories
   * it reads above the root are watched.
   */
  resolve(dir: string, name: string, within = true): string | undefined {
    for (let at = dir; ; at = dirname(at)) {
      const above = !isInside(this.root, at);
      if (above && within) return undefined;
      if (basename(at) !== 'node_modules') {
        const candidate = join(at, 'node_modules', name);
        // A package installed there later appears in node_modules, or in its scope's directory.
        if (above) for (const dir of new Set([join(at, 'node_modules'), dirname(candidate)])) if (existsSync(dir)) this.watch?.(dir);
        const real = realOrUndefined(candidate);
        if (real !== undefined) return !within || isInside(this.root, real) ? real : undefined;
      }
      if (dirname(at) === at) return undefined;
    }
  }

  read(dir: string): PackageJson {
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
