import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface FakeKeys {
  readonly rsa: KeyObject;
  readonly ec: KeyObject;
  readonly ec384: KeyObject;
  /** Only a machine key: the user key of the same name does not exist. */
  readonly machine: KeyObject;
}

/**
 * Writes the fake shim's keys and an executable that starts it, into `dir`; returns the
 * executable (the backend's shim_path) and the keys. Keys "slow", "garbage" and
 * "truncate" make the fake misbehave when they sign (fake-shim.ts).
 */
export function prepareFakeShim(dir: string): { shimPath: string; keys: FakeKeys } {
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
  const ec384 = generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey;
  const machine = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
  const pem = (key: KeyObject) => key.export({ format: 'pem', type: 'pkcs8' });
  mkdirSync(join(dir, 'machine'), { recursive: true });
  for (const [name, key] of Object.entries({ rsa, ec, ec384, slow: ec, garbage: ec, truncate: ec })) writeFileSync(join(dir, `${name}.pem`), pem(key));
  writeFileSync(join(dir, 'machine', 'mach.pem'), pem(machine));
  const shimPath = join(dir, 'fake-shim');
  writeFileSync(shimPath, `#!/bin/sh\nexec "${process.execPath}" -r "${join(__dirname, 'ts-register.js')}" "${join(__dirname, 'fake-shim.ts')}" "$@"\n`);
  chmodSync(shimPath, 0o755);
  return { shimPath, keys: { rsa, ec, ec384, machine } };
}
