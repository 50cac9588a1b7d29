import { spawnSync } from 'node:child_process';
import type { KeyObject } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defaultShimPath } from '../../backends/cng';

/** Why the Wine tier cannot run here, or undefined when it can. */
export function wineMissing(): string | undefined {
  if (spawnSync('wine', ['--version'], { stdio: 'ignore' }).status !== 0) return 'wine is not installed';
  if (!existsSync(defaultShimPath())) return `${defaultShimPath()} is not built (scripts/build-cng-shim.sh)`;
  return undefined;
}

function run(command: string, args: string[], timeoutMs: number): void {
  // stdio ignored: Wine's background services inherit it and would hold pipes open.
  const result = spawnSync(command, args, { env: process.env, stdio: 'ignore', timeout: timeoutMs });
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} failed: ${result.error?.message ?? `exit ${result.status}, signal ${result.signal}`}`);
}

/**
 * A fresh WINEPREFIX for this test file, a persistent wineserver and a booted prefix
 * (the slow part, 5-60 s), so each shim start after it takes well under a second.
 * Returns the teardown: the wineserver and every Wine process of the prefix stop.
 */
export function startWine(): () => void {
  const prefix = mkdtempSync(join(tmpdir(), 'keylessd-wine-'));
  Object.assign(process.env, { WINEPREFIX: prefix, WINEDEBUG: '-all', WINEDLLOVERRIDES: 'mscoree,mshtml=' });
  run('wineserver', ['-p'], 30_000);
  run('wine', ['wineboot', '--init'], 180_000);
  return () => {
    spawnSync('wineserver', ['-k'], { env: process.env, stdio: 'ignore', timeout: 30_000 });
    rmSync(prefix, { recursive: true, force: true });
  };
}

/**
 * An executable for a `cng` backend's shim_path: the real shim under Wine with `keys`
 * imported under their names before keylessd's first frame (importing-shim.ts). Written
 * into `dir`; returns its path.
 */
export function prepareImportingShim(dir: string, keys: Readonly<Record<string, KeyObject>>): string {
  const keyDir = join(dir, 'test-keys');
  mkdirSync(keyDir, { recursive: true });
  for (const [name, key] of Object.entries(keys)) writeFileSync(join(keyDir, `${name}.pem`), key.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
  const shimPath = join(dir, 'importing-shim');
  writeFileSync(shimPath, `#!/bin/sh\nexec "${process.execPath}" -r "${join(__dirname, 'ts-register.js')}" "${join(__dirname, 'importing-shim.ts')}" "${keyDir}" "$@"\n`);
  chmodSync(shimPath, 0o755);
  return shimPath;
}

/** Pids of the Wine processes of this test file's WINEPREFIX whose command line contains `marker`. */
export function winePids(marker: string): number[] {
  const prefix = `WINEPREFIX=${process.env.WINEPREFIX}\0`;
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/cmdline`, 'utf8').includes(marker) && readFileSync(`/proc/${entry}/environ`, 'utf8').includes(prefix)) pids.push(Number(entry));
    } catch {
      // the process ended while we looked
    }
  }
  return pids;
}
