// The @migrate transformer: emitted code and diagnostics of each case under
// fixtures/transform/ against its expected files (UPDATE=1 rewrites them: review the diff),
// and real tspc builds through the tsconfig `plugins` entry.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { caseFormat, caseNames, casesDir, caseTitle, compileCase, expected, expectedName, root, type Format } from './helpers/transform.js';

const cases = suite('transformer cases');

function checkEmit(name: string, format: Format): void {
  const compiled = compileCase(name, format);
  for (const [file, text] of compiled.emit()) {
    assert.fixture(text, expected(name, expectedName(file, format), text), `${name}/${file} (${format})`);
  }
}

for (const name of caseNames()) {
  cases(`${name}: ${caseTitle(name)}`, () => {
    const compiled = compileCase(name);
    assert.is(compiled.typeErrors, '', 'the case is valid TypeScript');
    assert.fixture(compiled.migrateErrors, expected(name, 'errors.txt', compiled.migrateErrors));
    if (compiled.hasErrors) {
      assert.throws(() => compiled.emit(), /error TS9900\d\d/);
      return;
    }
    checkEmit(name, caseFormat(name));
    if (fs.existsSync(path.join(casesDir, name, 'output.cjs.js'))) checkEmit(name, 'cjs');
  });
}

cases('a module without annotations is emitted exactly as without the transformer', () => {
  const compiled = compileCase('unannotated');
  assert.equal(compiled.emit(true), compiled.emit(false));
});

cases.run();

const tspc = suite('tspc with the tsconfig plugins entry');

interface Build {
  status: number | null;
  output: string;
  emitted: string;
}

/** Builds a copy of a case as its own project, the package linked in as `rpcmig`. */
function buildWithTspc(name: string): Build {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rpcmig-tspc-'));
  try {
    for (const file of fs.readdirSync(path.join(casesDir, name)).filter((f) => f.endsWith('.ts'))) {
      fs.copyFileSync(path.join(casesDir, name, file), path.join(dir, file));
    }
    fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ type: 'module' }));
    const compilerOptions = {
      target: 'ES2022', module: 'node16', strict: true, outDir: 'dist', skipLibCheck: true,
      types: ['node'], typeRoots: [path.join(root, 'node_modules', '@types')],
      plugins: [{ transform: 'rpcmig/transformer' }],
    };
    fs.writeFileSync(path.join(dir, 'tsconfig.json'), JSON.stringify({ compilerOptions, include: ['*.ts'] }));
    fs.mkdirSync(path.join(dir, 'node_modules'));
    fs.symlinkSync(root, path.join(dir, 'node_modules', 'rpcmig'), 'dir');
    const tspcBin = path.join(root, 'node_modules', 'ts-patch', 'bin', 'tspc.js');
    const run = spawnSync(process.execPath, [tspcBin, '-p', dir], { cwd: dir, encoding: 'utf8', timeout: 120_000 });
    const out = path.join(dir, 'dist', 'input.js');
    const emitted = fs.existsSync(out) ? fs.readFileSync(out, 'utf8') : '';
    return { status: run.status, output: run.stdout + run.stderr, emitted };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

tspc('a variable that cannot migrate fails the build, naming file, line, variable and member path', () => {
  const build = buildWithTspc('reject-function');
  assert.is.not(build.status, 0);
  assert.ok(
    build.output.includes("input.ts(5,7): error TS990001: Variable 'handlers' cannot migrate: 'handlers.onMessage' is a function."),
    build.output,
  );
});

tspc('a build with only warnings succeeds, prints them and injects the calls', () => {
  const build = buildWithTspc('unchecked');
  assert.is(build.status, 0, build.output);
  assert.ok(build.output.includes("warning TS990011: Variable 'config' is not checked: 'config' has type 'any'"), build.output);
  assert.ok(build.emitted.includes('import * as __rpcmig from "rpcmig/state";'), build.emitted);
  assert.ok(build.emitted.includes('__rpcmig_state.restore("input.ts#config", {})'), build.emitted);
});

tspc.run();
