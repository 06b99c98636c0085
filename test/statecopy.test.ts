// A state file sent while its server writes it (daemon/statecopy.ts): every byte arrives once,
// the first bytes, where the header lands, last and marked final.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { closeSync, mkdtempSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sendRest, tailSnapshot, type SendPiece } from '../daemon/statecopy.js';
import { deferred } from '../daemon/deferred.js';

const base = mkdtempSync(join(tmpdir(), 'rpcmig-statecopy-'));
test.after(() => rmSync(base, { recursive: true, force: true }));
let files = 0;

/** Pieces as a destination gets them, and the file they make. */
function receiver(): { send: SendPiece; pieces: Array<[number, number, boolean]>; bytes(size: number): Buffer } {
  const pieces: Array<[number, number, boolean]> = [];
  const got = new Map<number, Buffer>();
  return {
    pieces,
    send: async (offset, bytes, final) => {
      pieces.push([offset, bytes.length, final]);
      got.set(offset, Buffer.from(bytes));
    },
    bytes(size) {
      const whole = Buffer.alloc(size);
      for (const [offset, piece] of got) piece.copy(whole, offset);
      return whole;
    },
  };
}

/** Writes as a snapshot does: room for a header, the body in slices over time, the header, the rename. */
async function writeLikeASnapshot(temporary: string, path: string, header: Buffer, body: Buffer, slices: number): Promise<void> {
  const fd = openSync(temporary, 'w', 0o600);
  const slice = Math.ceil(body.length / slices);
  for (let at = 0; at < body.length; at += slice) {
    writeSync(fd, body, at, Math.min(slice, body.length - at), header.length + at);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  writeSync(fd, header, 0, header.length, 0);
  closeSync(fd);
  renameSync(temporary, path);
}

test('a file that grows is sent as it grows; the rest and then its first bytes once it is whole', async () => {
  const path = join(base, `state${files++}`);
  const temporary = `${path}.1.tmp`;
  const header = randomBytes(100);
  const body = randomBytes(3 * 2 ** 20 + 12345);
  const reported = deferred<void>();
  const { send, pieces, bytes } = receiver();
  const tailing = tailSnapshot(temporary, send, reported.promise, () => false);
  await writeLikeASnapshot(temporary, path, header, body, 40);
  reported.resolve();
  const tailed = await tailing;
  assert.ok(tailed !== undefined, 'the file was seen');
  assert.ok(tailed!.held > header.length, `the first bytes held back (${tailed!.held}) cover the header (${header.length})`);
  assert.ok(tailed!.sent > tailed!.held, `bytes went while the file grew: ${tailed!.sent - tailed!.held}`);
  const during = pieces.length;
  const size = await sendRest(path, tailed!, send);
  assert.is(size, header.length + body.length);
  assert.equal(bytes(size), Buffer.concat([header, body]), 'every byte arrives, once');
  assert.is(pieces.reduce((sum, [, length]) => sum + length, 0), size, 'no byte sent twice');
  assert.equal(pieces.slice(0, -1).map(([, , final]) => final), pieces.slice(0, -1).map(() => false));
  const [offset, length, final] = pieces.at(-1)!;
  assert.is(offset + length, tailed!.held, 'the last piece ends where the held bytes end');
  assert.is(final, true, 'the last piece, the first bytes, is final');
  assert.ok(pieces.length > during, 'the rest went after the report');
});

test('no file (a state sent inline, or a snapshot that failed first): nothing is sent', async () => {
  const { send, pieces } = receiver();
  const reported = deferred<void>();
  const tailing = tailSnapshot(join(base, 'never.tmp'), send, reported.promise, () => false);
  await new Promise((resolve) => setTimeout(resolve, 20));
  reported.reject(new Error('the snapshot failed'));
  assert.is(await tailing, undefined);
  assert.equal(pieces, []);
});

test('a file the tail did not see goes whole, in pieces of at most 1 MiB, the last final', async () => {
  const path = join(base, `state${files++}`);
  const content = randomBytes(2.5 * 2 ** 20);
  const fd = openSync(path, 'w', 0o600);
  writeSync(fd, content);
  closeSync(fd);
  const { send, pieces, bytes } = receiver();
  assert.is(await sendRest(path, undefined, send), content.length);
  assert.equal(bytes(content.length), content);
  assert.equal(pieces, [[0, 2 ** 20, false], [2 ** 20, 2 ** 20, false], [2 * 2 ** 20, 2 ** 19, true]]);
});

test('a move that ended stops the tail, with what it sent so far', async () => {
  const path = join(base, `state${files++}`);
  const temporary = `${path}.1.tmp`;
  const fd = openSync(temporary, 'w', 0o600);
  writeSync(fd, randomBytes(1000), 0, 1000, 64);
  let ended = false;
  const { send, pieces } = receiver();
  const tailing = tailSnapshot(temporary, send, new Promise(() => undefined), () => ended);
  await new Promise((resolve) => setTimeout(resolve, 20));
  writeSync(fd, randomBytes(5000), 0, 5000, 1064);
  await new Promise((resolve) => setTimeout(resolve, 20));
  ended = true;
  const tailed = await tailing;
  closeSync(fd);
  assert.equal(tailed, { held: 1064, sent: 6064 });
  assert.equal(pieces, [[1064, 5000, false]]);
});

test.run();
