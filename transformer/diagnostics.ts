// The transformer's compile errors: one stable code per kind of value that cannot migrate,
// in a private range so that they never clash with TypeScript's own codes.
import type * as TS from 'typescript';

export type Ts = typeof TS;

export const Code = {
  Function: 990001,
  Promise: 990002,
  WeakReference: 990003,
  Symbol: 990004,
  LiveHandle: 990005,
  ForeignClass: 990006,
  PrivateMembers: 990007,
  UnregistrableClass: 990008,
  Misplaced: 990009,
  Destructuring: 990010,
  Unchecked: 990011,
  NotAModule: 990012,
} as const;

export type Code = (typeof Code)[keyof typeof Code];

/** A reason why one part (`path`) of a variable's value cannot migrate, or is not checked. */
export interface Reason {
  code: Code;
  path: string;
  text: string;
}

export function createDiagnostic(
  ts: Ts,
  file: TS.SourceFile,
  span: { pos: number; end: number },
  code: Code,
  messageText: string,
): TS.Diagnostic {
  const category = code === Code.Unchecked ? ts.DiagnosticCategory.Warning : ts.DiagnosticCategory.Error;
  return { file, start: span.pos, length: span.end - span.pos, code, category, messageText };
}

export function reasonDiagnostic(ts: Ts, name: TS.Identifier, reason: Reason): TS.Diagnostic {
  const file = name.getSourceFile();
  const verb = reason.code === Code.Unchecked ? 'is not checked' : 'cannot migrate';
  const text = `Variable '${name.text}' ${verb}: '${reason.path}' ${reason.text}`;
  return createDiagnostic(ts, file, { pos: name.getStart(file), end: name.end }, reason.code, text);
}

/** Formats diagnostics the way tsc prints them without --pretty, paths relative to `directory`. */
export function formatDiagnostics(ts: Ts, diagnostics: readonly TS.Diagnostic[], directory: string): string {
  return ts.formatDiagnostics(diagnostics, {
    getCanonicalFileName: (fileName) => fileName,
    getCurrentDirectory: () => directory,
    getNewLine: () => '\n',
  });
}

export function isError(ts: Ts, diagnostic: TS.Diagnostic): boolean {
  return diagnostic.category === ts.DiagnosticCategory.Error;
}
