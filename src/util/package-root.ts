import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { InstallationError } from '../errors';

/** The folder holding keylessd's package.json, whether running from src/ (tests) or dist/. */
export function packageRoot(): string {
  let dir = __dirname;
  while (!existsSync(join(dir, 'package.json')) || !existsSync(join(dir, 'proto'))) {
    const parent = dirname(dir);
    if (parent === dir) throw new InstallationError(`cannot find the keylessd package folder above ${__dirname}`);
    dir = parent;
  }
  return dir;
}

/** keylessd's version, from its package.json (what every program's --version prints). */
export function packageVersion(): string {
  return (JSON.parse(readFileSync(join(packageRoot(), 'package.json'), 'utf8')) as { version: string }).version;
}

/** An addon of binding.gyp (`npm ci` builds them), by target name; a clear error when it was not built. */
export function loadAddon<T>(target: string, what: string): T {
  const path = join(packageRoot(), 'build', 'Release', `${target}.node`);
  try {
    return require(path) as T;
  } catch (err) {
    throw new InstallationError(`cannot load ${what} ${path} (run \`npm ci\` or \`npm run build:native\`): ${(err as Error).message}`, { cause: err });
  }
}
