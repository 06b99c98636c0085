// Type-checker rules: walks the type of a @migrate variable through its members and returns
// every part that cannot be saved and restored, each with its member path, all together;
// plus the program's own classes it reaches, which the runtime must know to rebuild them.
import type * as TS from 'typescript';
import { Code, type Reason, type Ts } from './diagnostics.js';

export interface CheckEnv {
  ts: Ts;
  checker: TS.TypeChecker;
  /** True for the program's own (non-declaration, non-library) source files. */
  isOwnFile(file: TS.SourceFile): boolean;
}

export interface CheckResult {
  reasons: Reason[];
  classes: TS.ClassLikeDeclaration[];
}

interface Walk extends CheckEnv, CheckResult {
  visited: Set<TS.Type>;
}

/** Library classes whose instances are plain values the state file carries. */
const VALUE_CLASSES = new Set([
  'Date', 'RegExp', 'ArrayBuffer', 'Buffer', 'Int8Array', 'Uint8Array', 'Uint8ClampedArray',
  'Int16Array', 'Uint16Array', 'Int32Array', 'Uint32Array', 'Float32Array', 'Float64Array',
  'BigInt64Array', 'BigUint64Array',
]);
/** Library containers whose type arguments are checked: `[name, ...argument paths]`. */
const CONTAINERS = new Map([
  ['Map', ['.keys()', '.get()']], ['ReadonlyMap', ['.keys()', '.get()']],
  ['Set', ['.values()']], ['ReadonlySet', ['.values()']],
]);
const WEAK = new Set(['WeakMap', 'WeakSet', 'WeakRef', 'FinalizationRegistry']);

export function checkType(env: CheckEnv, path: string, type: TS.Type): CheckResult {
  const walk: Walk = { ...env, reasons: [], classes: [], visited: new Set() };
  visit(walk, type, path);
  return { reasons: walk.reasons, classes: walk.classes };
}

function visit(w: Walk, type: TS.Type, path: string): void {
  if (w.visited.has(type)) return;
  w.visited.add(type);
  const { TypeFlags } = w.ts;
  if (type.flags & (TypeFlags.Any | TypeFlags.Unknown | TypeFlags.NonPrimitive | TypeFlags.TypeParameter)) {
    const text = `has type '${w.checker.typeToString(type)}', so its value cannot be checked.`;
    w.reasons.push({ code: Code.Unchecked, path, text });
  } else if (type.flags & TypeFlags.ESSymbolLike) {
    w.reasons.push({ code: Code.Symbol, path, text: 'is a symbol.' });
  } else if (type.isUnionOrIntersection()) {
    for (const part of type.types) visit(w, part, path);
  } else if (type.flags & TypeFlags.Object) {
    visitObject(w, type as TS.ObjectType, path);
  }
  // Everything else is a primitive, a literal or an enum: always movable.
}

function visitObject(w: Walk, type: TS.ObjectType, path: string): void {
  if (type.getCallSignatures().length > 0 || type.getConstructSignatures().length > 0) {
    w.reasons.push({ code: Code.Function, path, text: 'is a function.' });
  } else if (w.checker.isArrayType(type)) {
    visit(w, w.checker.getTypeArguments(type as TS.TypeReference)[0], `${path}[number]`);
  } else if (w.checker.isTupleType(type)) {
    w.checker.getTypeArguments(type as TS.TypeReference).forEach((t, i) => visit(w, t, `${path}[${i}]`));
  } else if (isLibraryClass(w, type)) {
    visitLibraryClass(w, type, path);
  } else if (type.symbol?.flags & w.ts.SymbolFlags.Class) {
    visitOwnClass(w, type, path);
  } else {
    visitMembers(w, type, path, false);
  }
}

/** A class (or a global interface with a constructor, like `Map`) declared outside the program. */
function isLibraryClass(w: Walk, type: TS.ObjectType): boolean {
  const symbol = type.symbol as TS.Symbol | undefined;
  const { SymbolFlags } = w.ts;
  if (!symbol || !(symbol.flags & (SymbolFlags.Class | SymbolFlags.Interface))) return false;
  if (!(symbol.flags & SymbolFlags.Value)) return false;
  return !(symbol.declarations ?? []).some((d) => w.isOwnFile(d.getSourceFile()));
}

function visitLibraryClass(w: Walk, type: TS.ObjectType, path: string): void {
  const name = type.symbol.name;
  const containerPaths = CONTAINERS.get(name);
  if (containerPaths) {
    const args = w.checker.getTypeArguments(type as TS.TypeReference);
    args.forEach((arg, i) => visit(w, arg, path + containerPaths[i]));
  } else if (!VALUE_CLASSES.has(name)) {
    w.reasons.push(libraryClassReason(w, type, path));
  }
}

function libraryClassReason(w: Walk, type: TS.ObjectType, path: string): Reason {
  const name = type.symbol.name;
  if (name === 'Promise') return { code: Code.Promise, path, text: 'is a Promise.' };
  if (WEAK.has(name)) {
    return { code: Code.WeakReference, path, text: `is a ${name}; weak references cannot be saved.` };
  }
  if (name === 'EventEmitter') return { code: Code.LiveHandle, path, text: 'is an EventEmitter (a live handle).' };
  if (extendsEventEmitter(w, type)) {
    return { code: Code.LiveHandle, path, text: `is ${article(name)}, an EventEmitter (a live handle).` };
  }
  const text = `is ${article(name)}, a class from outside the program (a live handle or a class rpcmig cannot rebuild).`;
  return { code: Code.ForeignClass, path, text };
}

/** Declaration files can be inconsistent; the depth bound keeps a malformed chain finite. */
function extendsEventEmitter(w: Walk, type: TS.Type, depth = 0): boolean {
  const target = referenceTarget(w.ts, type);
  if (depth > 20 || !(target.flags & w.ts.TypeFlags.Object) || !target.isClassOrInterface()) return false;
  return w.checker.getBaseTypes(target).some(
    (base) => base.symbol?.name === 'EventEmitter' || extendsEventEmitter(w, base, depth + 1),
  );
}

/** A class of the program: registered with the runtime, its own data members checked. */
function visitOwnClass(w: Walk, type: TS.ObjectType, path: string): void {
  // A class expression's symbol is `__class`; the checker prints the name it is known by.
  const name = type.symbol.name.startsWith('__') ? w.checker.typeToString(type) : type.symbol.name;
  const declaration = type.symbol.declarations?.find((d): d is TS.ClassLikeDeclaration => w.ts.isClassLike(d));
  if (!declaration) return;
  if (hasPrivateMembers(w, type)) {
    w.reasons.push({ code: Code.PrivateMembers, path, text: `is ${article(name)}, whose class has #private members.` });
  } else if (!w.ts.isClassDeclaration(declaration) || !declaration.name || !w.ts.isSourceFile(declaration.parent)) {
    const text = `is ${article(name)}, a class not declared at module level (it cannot be registered).`;
    w.reasons.push({ code: Code.UnregistrableClass, path, text });
  } else if (!w.classes.includes(declaration)) {
    w.classes.push(declaration);
  }
  visitMembers(w, type, path, true);
}

/** `#private` members make an instance unrebuildable: brand checks fail on a copy. */
function hasPrivateMembers(w: Walk, type: TS.Type): boolean {
  const { ts } = w;
  const target = referenceTarget(ts, type);
  const own = (target.symbol.declarations ?? []).some((d) =>
    ts.isClassLike(d) && d.members.some((m) => m.name !== undefined && ts.isPrivateIdentifier(m.name) && !isStatic(ts, m)),
  );
  if (own || !target.isClassOrInterface()) return own;
  return w.checker.getBaseTypes(target).some((base) => hasPrivateMembers(w, base));
}

/** The generic declaration behind an instantiation like `Box<number>`. */
function referenceTarget(ts: Ts, type: TS.Type): TS.Type {
  const isReference = type.flags & ts.TypeFlags.Object && (type as TS.ObjectType).objectFlags & ts.ObjectFlags.Reference;
  return isReference ? (type as TS.TypeReference).target : type;
}

function isStatic(ts: Ts, member: TS.ClassElement): boolean {
  return ts.canHaveModifiers(member) && (ts.getModifiers(member) ?? []).some((m) => m.kind === ts.SyntaxKind.StaticKeyword);
}

/** Data members and index signatures; in a class, methods and accessors live on the prototype. */
function visitMembers(w: Walk, type: TS.ObjectType, path: string, inClass: boolean): void {
  const { SymbolFlags } = w.ts;
  for (const property of type.getProperties()) {
    if (inClass && property.flags & (SymbolFlags.Method | SymbolFlags.Accessor)) continue;
    // #private members are reported once, with their class.
    if (property.name.startsWith('#')) continue;
    visit(w, w.checker.getTypeOfSymbol(property), memberPath(path, property.name));
  }
  for (const info of w.checker.getIndexInfosOfType(type)) {
    visit(w, info.type, `${path}[${w.checker.typeToString(info.keyType)}]`);
  }
}

function memberPath(path: string, name: string): string {
  return /^[A-Za-z_$][\w$]*$/.test(name) ? `${path}.${name}` : `${path}[${JSON.stringify(name)}]`;
}

function article(name: string): string {
  return /^[AEIOU]/.test(name) ? `an ${name}` : `a ${name}`;
}
