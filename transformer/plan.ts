// The whole-program analysis, computed once per program: every @migrate variable with its key
// and schema fingerprint (the manifest each module embeds), the classes to register, and the
// diagnostics. Emitting a file then only looks its statements up here.
import { createHash } from 'node:crypto';
import * as path from 'node:path';
import type * as TS from 'typescript';
import { findAnnotations } from './annotations.js';
import { checkType, type CheckEnv } from './check.js';
import { Code, createDiagnostic, reasonDiagnostic, type Ts } from './diagnostics.js';

export interface MigrateVariable {
  key: string;
  name: TS.Identifier;
}

export interface FilePlan {
  /** Annotated statements (parse-tree nodes) and the variables each declares. */
  statements: Map<TS.Node, MigrateVariable[]>;
  /** Class declarations (parse-tree nodes) to register, with their keys. */
  classes: Map<TS.Node, string>;
}

export interface Plan {
  manifest: Record<string, string>;
  files: Map<TS.SourceFile, FilePlan>;
  diagnostics: TS.Diagnostic[];
}

const plans = new WeakMap<TS.Program, Plan>();

export function getPlan(ts: Ts, program: TS.Program): Plan {
  let plan = plans.get(program);
  if (!plan) plans.set(program, (plan = createPlan(ts, program)));
  return plan;
}

interface Planner extends CheckEnv {
  plan: Plan;
  classes: Set<TS.ClassLikeDeclaration>;
  keyOf(file: TS.SourceFile, name: string): string;
}

function createPlan(ts: Ts, program: TS.Program): Plan {
  const root = projectRoot(program);
  const isOwnFile = (file: TS.SourceFile) => !file.isDeclarationFile && !program.isSourceFileFromExternalLibrary(file);
  const planner: Planner = {
    ts,
    checker: program.getTypeChecker(),
    isOwnFile,
    plan: { manifest: {}, files: new Map(), diagnostics: [] },
    classes: new Set(),
    keyOf: (file, name) => `${path.posix.relative(root, file.fileName)}#${name}`,
  };
  for (const file of program.getSourceFiles().filter(isOwnFile)) {
    const annotations = findAnnotations(ts, file);
    planner.plan.diagnostics.push(...annotations.misplaced);
    if (annotations.statements.length > 0 && !ts.isExternalModule(file)) {
      planner.plan.diagnostics.push(notAModuleDiagnostic(ts, annotations.statements[0]));
      continue;
    }
    for (const statement of annotations.statements) {
      const variables = statement.declarationList.declarations.flatMap((d) => planVariable(planner, d));
      filePlan(planner.plan, file).statements.set(statement, variables);
    }
  }
  for (const declaration of planner.classes) {
    const file = declaration.getSourceFile();
    filePlan(planner.plan, file).classes.set(declaration, planner.keyOf(file, declaration.name?.text ?? ''));
  }
  planner.plan.diagnostics = [...ts.sortAndDeduplicateDiagnostics(planner.plan.diagnostics)];
  return planner.plan;
}

/** Checks one declarator and enters it in the manifest; a destructuring pattern is refused. */
function planVariable(planner: Planner, declaration: TS.VariableDeclaration): MigrateVariable[] {
  const { ts, checker, plan } = planner;
  if (!ts.isIdentifier(declaration.name)) {
    plan.diagnostics.push(destructuringDiagnostic(ts, declaration.name));
    return [];
  }
  const name = declaration.name;
  const key = planner.keyOf(name.getSourceFile(), name.text);
  const type = checker.getTypeAtLocation(name);
  const result = checkType(planner, name.text, type);
  plan.diagnostics.push(...result.reasons.map((reason) => reasonDiagnostic(ts, name, reason)));
  result.classes.forEach((c) => planner.classes.add(c));
  plan.manifest[key] = fingerprint(planner, key, type, declaration);
  return [{ key, name }];
}

function filePlan(plan: Plan, file: TS.SourceFile): FilePlan {
  let entry = plan.files.get(file);
  if (!entry) plan.files.set(file, (entry = { statements: new Map(), classes: new Map() }));
  return entry;
}

/** The directory of the tsconfig, so that keys do not depend on where the build runs. */
function projectRoot(program: TS.Program): string {
  const configFilePath = program.getCompilerOptions().configFilePath;
  if (typeof configFilePath !== 'string') return program.getCurrentDirectory();
  return path.posix.dirname(configFilePath.replace(/\\/g, '/'));
}

/**
 * The type is printed as seen from its declaration, so that types of other modules print as
 * relative `import("./x").T` and the fingerprint does not depend on absolute paths.
 */
function fingerprint(env: CheckEnv, key: string, type: TS.Type, at: TS.Node): string {
  const text = env.checker.typeToString(type, at, env.ts.TypeFormatFlags.NoTruncation);
  return createHash('sha256').update(`${key}\n${text}`).digest('hex').slice(0, 16);
}

function destructuringDiagnostic(ts: Ts, pattern: TS.BindingPattern): TS.Diagnostic {
  const file = pattern.getSourceFile();
  const text = "'@migrate' does not support destructuring; annotate a plain variable.";
  return createDiagnostic(ts, file, { pos: pattern.getStart(file), end: pattern.end }, Code.Destructuring, text);
}

/** The runtime is imported; a script (no import or export) would keep that import as is under CommonJS. */
function notAModuleDiagnostic(ts: Ts, statement: TS.VariableStatement): TS.Diagnostic {
  const file = statement.getSourceFile();
  const text = "'@migrate' needs a module: add an import or an export to this file.";
  return createDiagnostic(ts, file, { pos: statement.getStart(file), end: statement.end }, Code.NotAModule, text);
}
