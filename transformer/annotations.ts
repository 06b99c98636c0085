// Finds the `@migrate` annotations of a source file. TypeScript 5.3+ no longer parses JSDoc
// in .ts files, so the leading comment ranges of every node are read directly.
import type * as TS from 'typescript';
import { Code, createDiagnostic, type Ts } from './diagnostics.js';

/** The tag as a whole word: not `@migrated`, not `x@migrate`. A quick test of a whole file. */
const TAG = /(?<![\w$@])@migrate(?![\w$-])/;
/**
 * The tag as JSDoc places a block tag: first on a line of the comment, after the comment's
 * opening or a leading `*`. Prose that mentions `@migrate` mid-sentence does not annotate.
 */
const TAG_LINE = /(?:^|\n)[ \t]*(?:\/\/+|\/\*+|\*+)?[ \t]*@migrate(?![\w$-])/;

export interface Annotations {
  /** Module-level variable statements, in source order. */
  statements: TS.VariableStatement[];
  /** One error per annotation that is anywhere else. */
  misplaced: TS.Diagnostic[];
}

export function findAnnotations(ts: Ts, file: TS.SourceFile): Annotations {
  const found: Annotations = { statements: [], misplaced: [] };
  if (!TAG.test(file.text)) return found;
  // A comment leads every node that starts after it; pre-order visits the outermost first,
  // which is the node the comment annotates.
  const seen = new Set<number>();
  const claim = (comment: TS.CommentRange, node: TS.Node, target: string | undefined): void => {
    if (seen.has(comment.pos)) return;
    seen.add(comment.pos);
    if (!TAG_LINE.test(file.text.slice(comment.pos, comment.end))) return;
    if (target !== undefined) found.misplaced.push(misplacedDiagnostic(ts, file, comment, target));
    // A statement can carry several tagged comments; it is annotated once.
    else if (!found.statements.includes(node as TS.VariableStatement)) found.statements.push(node as TS.VariableStatement);
  };
  const visit = (node: TS.Node): void => {
    for (const comment of ts.getLeadingCommentRanges(file.text, node.pos) ?? []) {
      claim(comment, node, misplacement(ts, node));
    }
    // A comment on the line of earlier code (`let a, /** @migrate */ b`) is that code's
    // trailing comment: never taken as annotating a whole statement.
    for (const comment of ts.getTrailingCommentRanges(file.text, node.pos) ?? []) {
      claim(comment, node, misplacement(ts, node) ?? 'the code before it on its line');
    }
    ts.forEachChild(node, visit);
  };
  ts.forEachChild(file, visit);
  return found;
}

function misplacedDiagnostic(ts: Ts, file: TS.SourceFile, comment: TS.CommentRange, target: string): TS.Diagnostic {
  const text = `'@migrate' must annotate a module-level 'const', 'let' or 'var' statement, not ${target}.`;
  return createDiagnostic(ts, file, comment, Code.Misplaced, text);
}

/** What the annotated node is, when it is not a module-level variable statement. */
function misplacement(ts: Ts, node: TS.Node): string | undefined {
  if (ts.isVariableStatement(node)) {
    if (!ts.isSourceFile(node.parent)) return 'a variable inside a function, block or namespace';
    const ambient = node.modifiers?.some((m) => m.kind === ts.SyntaxKind.DeclareKeyword);
    return ambient ? "an ambient ('declare') variable" : undefined;
  }
  if (ts.isClassElement(node) || ts.isTypeElement(node)) return 'a class or interface member';
  if (ts.isFunctionLike(node)) return 'a function';
  if (ts.isClassLike(node)) return 'a class';
  if (ts.isExpressionStatement(node)) return 'an expression statement';
  if (ts.isVariableDeclaration(node)) return 'one declarator (annotate the whole statement)';
  return ts.isStatement(node) ? 'this statement' : 'an expression';
}
