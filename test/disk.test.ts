// A destination whose disk fills up mid-copy (its spool on a 1 MiB tmpfs): the move rolls
// back, the source serves on with its state, the destination keeps nothing of the move, and a
// move to a destination with room then succeeds.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { connect } from '../runtime/index.js';
import { breakdown, Cluster, COUNTER } from './helpers/cluster.js';
import { startDaemonProcess, type DaemonProcess } from './helpers/daemon.js';
import { requireNetns } from './helpers/netns.js';
import { stop } from './helpers/process.js';

const cluster = new Cluster();
const tiny = join(cluster.dir, 'tiny');
let full: DaemonProcess | undefined;
let mounted = false;

test.after(async () => {
  if (full) await stop(full.pid);
  if (mounted) spawnSync('umount', [tiny], { timeout: 5000 });
  await cluster.close();
});

test('ENOSPC at the destination mid-copy rolls the move back; a retry elsewhere succeeds', async () => {
  requireNetns(); // root, as mounting needs
  mkdirSync(tiny);
  const mount = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1m,mode=0700', 'tmpfs', tiny], { encoding: 'utf8', timeout: 5000 });
  assert.is(mount.status, 0, mount.stderr);
  mounted = true;
  const a = await cluster.daemon();
  full = await startDaemonProcess(cluster.key.file, tiny);
  const started = await cluster.server(COUNTER, a, ['--name', 'cramped']);
  const client = await connect<{ incr(): number; get(): number; where(): { pid: number } }>('cramped', { daemon: a.address, keyFile: cluster.key.file });
  await client.incr();
  const failed = await cluster.migrate('cramped', a, full);
  assert.is(failed.code, 9, failed.stderr);
  assert.match(failed.stderr, /MIGRATION_FAILED: prepare failed: .*ENOSPC/);
  assert.match(failed.stderr, /cramped serves on at /);
  assert.is(await client.incr(), 2);
  assert.is((await client.where()).pid, started.pid);
  const spool = join(tiny, 'spool');
  const arriving = join(spool, 'arriving');
  assert.equal(existsSync(arriving) ? readdirSync(arriving) : [], [], 'nothing of the move is left at the destination');
  assert.equal(readdirSync(join(spool, 'blobs', 'tmp'), { recursive: true, withFileTypes: true }).filter((e) => !e.isDirectory()), [], 'no half-written blob is left');
  const blank = join(spool, 'blobs', 'blank');
  assert.equal(readdirSync(blank).filter((name) => statSync(join(blank, name)).size !== 0), [], 'no blank was left half-written');
  const roomy = await cluster.daemon();
  breakdown(await cluster.migrate('cramped', a, roomy, ['--grace', '0.2']));
  assert.is(await client.get(), 2);
  await client.close();
});

test.run();
