// What every benchmark shares: the machine line and the writer of its own section of
// bench/RESULTS.md (between `<!-- bench:NAME -->` markers; other sections are left alone).
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { ROOT } from '../test/helpers/process.js';

export function machine(): string {
  const list = cpus();
  return `${list[0]?.model.trim() ?? 'unknown cpu'}, ${list.length} cores, Node ${process.version}`;
}

export function writeSection(name: string, markdown: string): void {
  const path = join(ROOT, 'bench', 'RESULTS.md');
  const [open, close] = [`<!-- bench:${name} -->`, `<!-- /bench:${name} -->`];
  const section = `${open}\n${markdown}\n${close}`;
  const old = existsSync(path) ? readFileSync(path, 'utf8') : '# Benchmark results\n';
  const start = old.indexOf(open);
  const end = old.indexOf(close);
  const next = start >= 0 && end > start ? old.slice(0, start) + section + old.slice(end + close.length) : `${old.trimEnd()}\n\n${section}\n`;
  writeFileSync(path, next);
}

export function median(values: number[]): number {
  const sorted = [...values].sort((x, y) => x - y);
  const middle = sorted.length >> 1;
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}
