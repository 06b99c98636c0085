// The transformer entry, `rpcmig/transformer`: a `(program, config, extras) => factory` for
// ts-patch's tsconfig `plugins`, also usable through `program.emit(..., { before: [...] })`.
import type * as TS from 'typescript';
import { formatDiagnostics, isError, type Ts } from './diagnostics.js';
import { injectSourceFile } from './inject.js';
import { getPlan } from './plan.js';

export { Code } from './diagnostics.js';

/** What ts-patch passes as the third argument (the parts used here). */
export interface TransformerExtras {
  ts?: Ts;
  addDiagnostic?: (diagnostic: TS.Diagnostic) => unknown;
}

const reported = new WeakSet<TS.Program>();

/**
 * Injects the save/restore code of every `@migrate` variable. Compile errors go to ts-patch's
 * `addDiagnostic`; without it (plain TypeScript API) the factory throws them as one Error.
 */
export function transformer(
  program: TS.Program,
  _config?: unknown,
  extras?: TransformerExtras,
): TS.TransformerFactory<TS.SourceFile> {
  const ts = extras?.ts ?? loadTypeScript();
  const plan = getPlan(ts, program);
  report(ts, program, plan.diagnostics, extras?.addDiagnostic);
  return (context) => (source) => {
    const file = plan.files.get(ts.getOriginalNode(source, ts.isSourceFile));
    return file ? injectSourceFile(ts, context, source, file, plan.manifest) : source;
  };
}

export default transformer;

/** The transformer's errors and warnings, for API users who have no ts-patch to report them. */
export function getMigrateDiagnostics(program: TS.Program, ts: Ts = loadTypeScript()): TS.Diagnostic[] {
  return [...getPlan(ts, program).diagnostics];
}

function report(
  ts: Ts,
  program: TS.Program,
  diagnostics: readonly TS.Diagnostic[],
  addDiagnostic: TransformerExtras['addDiagnostic'],
): void {
  const errors = diagnostics.filter((d) => isError(ts, d));
  const warnings = diagnostics.filter((d) => !isError(ts, d));
  if (!addDiagnostic) {
    if (errors.length > 0) throw new Error(formatDiagnostics(ts, errors, program.getCurrentDirectory()));
    return;
  }
  // ts-patch hands every emit of a program the same diagnostics list: add them once.
  if (reported.has(program)) return;
  reported.add(program);
  errors.forEach(addDiagnostic);
  // tsc fails the build on any diagnostic it is handed, warnings included; so they are printed.
  if (warnings.length > 0) ts.sys.write(formatDiagnostics(ts, warnings, program.getCurrentDirectory()));
}

function loadTypeScript(): Ts {
  return require('typescript') as Ts;
}
