import { readFileSync, writeFileSync } from 'node:fs';
import { UsageError } from './connection';

export function readInput(path: string | undefined, what: string): Buffer {
  if (path === undefined || path === '-') {
    if (process.stdin.isTTY) throw new UsageError(`give ${what} as a file, or pipe it to standard input`);
    return readFileSync(0);
  }
  try {
    return readFileSync(path);
  } catch (err) {
    throw new UsageError(`cannot read ${what} ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

export function parseHex(text: string, flag: string): Buffer {
  const clean = text.replace(/[\s:]/g, '');
  if (!/^([0-9a-fA-F]{2})+$/.test(clean)) throw new UsageError(`${flag} must be hex bytes, got ${JSON.stringify(text.slice(0, 20))}`);
  return Buffer.from(clean, 'hex');
}

export type OutputFormat = 'hex' | 'base64' | 'raw';

export function writeOutput(bytes: Buffer, format: string, out: string | undefined): void {
  if (format !== 'hex' && format !== 'base64' && format !== 'raw') throw new UsageError(`--format must be hex, base64 or raw, got ${format}`);
  const data = format === 'raw' ? bytes : Buffer.from(`${bytes.toString(format)}\n`);
  if (out === undefined || out === '-') {
    if (format === 'raw' && process.stdout.isTTY) throw new UsageError('refusing to write raw bytes to a terminal: use --out FILE or --format hex');
    process.stdout.write(data);
  } else {
    writeFileSync(out, data);
  }
}
