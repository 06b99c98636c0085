// Compiles a transformer case (fixtures/transform/<case>/) with a real program and type
// checker, under the options of fixtures/tsconfig.json, and captures what would be written.
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ts from 'typescript';
import { getMigrateDiagnostics, transformer } from '../../transformer/index.js';

export const root = path.resolve(__dirname, '../../..');
export const casesDir = path.join(root, 'fixtures', 'transform');

export type Format = 'esm' | 'cjs';

export interface Compiled {
  program: ts.Program;
  /** What tsc itself reports: a case must be valid TypeScript. */
  typeErrors: string;
  /** The transformer's diagnostics, as tsc prints them. */
  migrateErrors: string;
  hasErrors: boolean;
  /** Emit with the transformer, by output name relative to the case (`input.js`); empty on errors. */
  emit(withTransformer?: boolean): Map<string, string>;
}

function compilerOptions(caseDir: string, format: Format): ts.CompilerOptions {
  const fixtures = path.join(root, 'fixtures');
  const config = ts.readConfigFile(path.join(fixtures, 'tsconfig.json'), ts.sys.readFile).config;
  const { options } = ts.convertCompilerOptionsFromJson(config.compilerOptions, fixtures);
  const cjs = { module: ts.ModuleKind.CommonJS, moduleResolution: ts.ModuleResolutionKind.Node10 };
  return { ...options, ...(format === 'cjs' ? cjs : {}), rootDir: caseDir, outDir: path.join(caseDir, 'dist') };
}

/** A case is ESM, like fixtures/, unless its own package.json says commonjs. */
export function caseFormat(name: string): Format {
  const manifest = path.join(casesDir, name, 'package.json');
  return fs.existsSync(manifest) && JSON.parse(fs.readFileSync(manifest, 'utf8')).type === 'commonjs' ? 'cjs' : 'esm';
}

export function compileCase(name: string, format: Format = caseFormat(name)): Compiled {
  const caseDir = path.join(casesDir, name);
  const options = compilerOptions(caseDir, format);
  const host = ts.createCompilerHost(options);
  // Keys and printed paths are relative to the case, as they would be to a project's tsconfig.
  host.getCurrentDirectory = () => caseDir;
  const files = fs.readdirSync(caseDir).filter((f) => f.endsWith('.ts')).map((f) => path.join(caseDir, f));
  const program = ts.createProgram(files, options, host);
  const diagnostics = getMigrateDiagnostics(program);
  const format_ = (list: readonly ts.Diagnostic[]) =>
    ts.formatDiagnostics(list, { getCanonicalFileName: (f) => f, getCurrentDirectory: () => caseDir, getNewLine: () => '\n' });
  const emit = (withTransformer = true) => {
    const outputs = new Map<string, string>();
    const write = (file: string, text: string) => outputs.set(path.relative(options.outDir!, file), text);
    const before = withTransformer ? [transformer(program)] : [];
    program.emit(undefined, write, undefined, false, { before });
    return outputs;
  };
  return {
    program,
    typeErrors: format_(ts.getPreEmitDiagnostics(program)),
    migrateErrors: format_(diagnostics),
    hasErrors: diagnostics.some((d) => d.category === ts.DiagnosticCategory.Error),
    emit,
  };
}

/** `input.js` is compared with `output.js`, any other module `m.js` with `m.output.js`. */
export function expectedName(emitted: string, format: Format): string {
  const base = emitted.replace(/\.js$/, '');
  const suffix = format === 'cjs' ? 'output.cjs.js' : 'output.js';
  return base === 'input' ? suffix : `${base}.${suffix}`;
}

/** Reads an expected file; with UPDATE=1 writes `actual` first (removing it when empty). */
export function expected(name: string, file: string, actual: string): string {
  const target = path.join(casesDir, name, file);
  if (process.env.UPDATE === '1') {
    if (actual === '') fs.rmSync(target, { force: true });
    else fs.writeFileSync(target, actual);
  }
  return fs.existsSync(target) ? fs.readFileSync(target, 'utf8') : '';
}

export function caseNames(): string[] {
  return fs.readdirSync(casesDir, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name).sort();
}

/** A case's title is the first line of its input: `// <what the case shows>`. */
export function caseTitle(name: string): string {
  const first = fs.readFileSync(path.join(casesDir, name, 'input.ts'), 'utf8').split('\n')[0];
  return first.replace(/^\/\/\s*/, '');
}
