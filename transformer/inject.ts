// Emits the runtime calls into a module that has @migrate variables or registers classes:
//
//   import * as __rpcmig from "rpcmig/state";
//   const __rpcmig_state = __rpcmig.program({ "server.ts#dict": "9c1e4f0a2b3d5e6f" });
//   /** @migrate */
//   const dict = __rpcmig_state.restore("server.ts#dict", new Map());
//   __rpcmig_state.register("server.ts#dict", () => dict);
//   class Session {}
//   __rpcmig_state.registerClass("server.ts#Session", Session);
import type * as TS from 'typescript';
import type { Ts } from './diagnostics.js';
import type { FilePlan, MigrateVariable } from './plan.js';

export const RUNTIME_MODULE = 'rpcmig/state';

interface Injector {
  ts: Ts;
  factory: TS.NodeFactory;
  file: FilePlan;
  /** The module's ProgramState, `__rpcmig_state` unless the module already uses that name. */
  state: TS.Identifier;
}

export function injectSourceFile(
  ts: Ts,
  context: TS.TransformationContext,
  source: TS.SourceFile,
  file: FilePlan,
  manifest: Record<string, string>,
): TS.SourceFile {
  const { factory } = context;
  // Optimistic unique names print as written unless the module declares them already.
  const flags = ts.GeneratedIdentifierFlags.Optimistic | ts.GeneratedIdentifierFlags.FileLevel;
  const injector: Injector = { ts, factory, file, state: factory.createUniqueName('__rpcmig_state', flags) };
  const namespace = factory.createUniqueName('__rpcmig', flags);
  const split = source.statements.findIndex((s) => !(ts.isExpressionStatement(s) && ts.isStringLiteral(s.expression)));
  const prologue = split < 0 ? source.statements : source.statements.slice(0, split);
  const body = source.statements.slice(prologue.length).flatMap((s) => visitStatement(injector, s));
  const statements = [...prologue, ...programPrelude(injector, namespace, manifest), ...body];
  return factory.updateSourceFile(source, ts.setTextRange(factory.createNodeArray(statements), source.statements));
}

/**
 * The namespace import is the one form that TypeScript's CommonJS transform rewrites into a
 * `require` for a synthesized import (a named import's references would not be rewritten).
 */
function programPrelude(injector: Injector, namespace: TS.Identifier, manifest: Record<string, string>): TS.Statement[] {
  const { ts, factory } = injector;
  const clause = factory.createImportClause(false, undefined, factory.createNamespaceImport(namespace));
  const load = factory.createImportDeclaration(undefined, clause, factory.createStringLiteral(RUNTIME_MODULE));
  const entries = Object.entries(manifest).map(([key, fingerprint]) =>
    factory.createPropertyAssignment(factory.createStringLiteral(key), factory.createStringLiteral(fingerprint)),
  );
  const call = factory.createCallExpression(factory.createPropertyAccessExpression(namespace, 'program'), undefined, [
    factory.createObjectLiteralExpression(entries, true),
  ]);
  const declaration = factory.createVariableDeclaration(injector.state, undefined, undefined, call);
  return [load, factory.createVariableStatement(undefined, factory.createVariableDeclarationList([declaration], ts.NodeFlags.Const))];
}

function visitStatement(injector: Injector, statement: TS.Statement): TS.Statement[] {
  const original = injector.ts.getOriginalNode(statement);
  const variables = injector.file.statements.get(original);
  if (variables && injector.ts.isVariableStatement(statement)) return visitVariableStatement(injector, statement, variables);
  const classKey = injector.file.classes.get(original);
  if (classKey && injector.ts.isClassDeclaration(statement) && statement.name) {
    // registerClass("m.ts#Session", Session) after `class Session {}`
    const call = stateCall(injector, 'registerClass', classKey, reference(injector, statement.name));
    return [statement, injector.factory.createExpressionStatement(call)];
  }
  return [statement];
}

/**
 * `const a = init` becomes `const a = state.restore(key, init)` followed by
 * `state.register(key, () => a)`: restored in place, so later module code sees the saved value.
 */
function visitVariableStatement(
  injector: Injector,
  statement: TS.VariableStatement,
  variables: MigrateVariable[],
): TS.Statement[] {
  const { ts, factory } = injector;
  const keyOf = new Map(variables.map((v) => [v.name, v.key]));
  const declarations = statement.declarationList.declarations.map((declaration) => {
    const key = keyOf.get(ts.getOriginalNode(declaration.name) as TS.Identifier);
    if (key === undefined) return declaration;
    const initial = declaration.initializer ?? factory.createIdentifier('undefined');
    const restore = ts.setTextRange(stateCall(injector, 'restore', key, initial), declaration.initializer);
    return factory.updateVariableDeclaration(declaration, declaration.name, declaration.exclamationToken, declaration.type, restore);
  });
  const list = factory.updateVariableDeclarationList(statement.declarationList, declarations);
  const registers = variables.map((v) =>
    factory.createExpressionStatement(stateCall(injector, 'register', v.key, getter(injector, v.name))),
  );
  return [factory.updateVariableStatement(statement, statement.modifiers, list), ...registers];
}

/**
 * `() => name`. References point back at the declaration's name so that the CommonJS
 * transform still rewrites an exported variable to `exports.name`.
 */
function getter(injector: Injector, name: TS.Identifier): TS.ArrowFunction {
  return injector.factory.createArrowFunction(undefined, undefined, [], undefined, undefined, reference(injector, name));
}

function reference(injector: Injector, name: TS.Identifier): TS.Identifier {
  return injector.ts.setOriginalNode(injector.factory.createIdentifier(name.text), name);
}

/** `__rpcmig_state.method("key", value)` */
function stateCall(injector: Injector, method: string, key: string, value: TS.Expression): TS.CallExpression {
  const { factory } = injector;
  const callee = factory.createPropertyAccessExpression(injector.state, method);
  return factory.createCallExpression(callee, undefined, [factory.createStringLiteral(key), value]);
}
