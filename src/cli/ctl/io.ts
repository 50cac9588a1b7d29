import { readFileSync, writeFileSync } from 'node:fs';
import { UsageError } from './connection';

const ERRNO_TEXT: Readonly<Record<string, string>> = {
  ENOENT: 'no such file',
  EACCES: 'permission denied',
  EPERM: 'permission denied',
  EISDIR: 'it is a directory',
  ENOTDIR: 'a part of the path is not a directory',
  ELOOP: 'a symbolic link loop',
};

/** `ENOENT (no such file)`: the code for searching, and what it means. */
export function describeFsError(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  if (!code) return (err as Error).message;
  return ERRNO_TEXT[code] ? `${code} (${ERRNO_TEXT[code]})` : code;
}

export function readInput(path: string | undefined, what: string): Buffer {
  if (path === undefined || path === '-') {
    if (process.stdin.isTTY) throw new UsageError(`give ${what} as a file, or pipe it to standard input`);
    return readFileSync(0);
  }
  try {
    return readFileSync(path);
  } catch (err) {
    throw new UsageError(`cannot read ${what} file ${path}: ${describeFsError(err)}`, { cause: err });
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
