import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { ConfigError } from '../../src/errors';
import type { Pkcs11Uri } from './uri';

/** The token PIN from pin-source (a file, or a command's output) or pin-value. Never logged. */
export function resolvePin(uri: Pkcs11Uri, field: string): string | undefined {
  if (uri.pinValue !== undefined) return uri.pinValue;
  const source = uri.pinSource;
  if (!source) return undefined;
  try {
    const text = source.kind === 'file' ? readFileSync(source.path, 'utf8') : execFileSync(source.command, { encoding: 'utf8', timeout: 10_000, stdio: ['ignore', 'pipe', 'ignore'] });
    return text.replace(/\r?\n$/, '');
  } catch (err) {
    // Only the error code or exit status: a failing command's output could hold the PIN.
    const { code, status } = err as NodeJS.ErrnoException & { status?: number | null };
    const what = source.kind === 'file' ? `the PIN file ${source.path}` : `the PIN command ${source.command}`;
    throw new ConfigError(field, `cannot read ${what}: ${code ?? (typeof status === 'number' ? `it exited with status ${status}` : 'it failed')}`);
  }
}
