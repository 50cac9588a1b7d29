import { readdirSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';

/**
 * Where the records of one audit log live: rotated files `PATH.<last seq, 12 digits>`
 * (the names sort oldest first) and the current file PATH. The writer, the verifier and
 * `keylessctl audit` all find them here, so they always agree on the order.
 */
export function rotatedName(path: string, lastSeq: number): string {
  return `${path}.${String(lastSeq).padStart(12, '0')}`;
}

/** The seq of the last record in a rotated file, from its name (the inverse of rotatedName). */
export function lastSeqOf(rotatedFile: string): number {
  return Number(rotatedFile.slice(rotatedFile.lastIndexOf('.') + 1));
}

/** The rotated files of the log at `path`, oldest first. */
export function rotatedFiles(path: string): string[] {
  const dir = dirname(path);
  const pattern = new RegExp(`^${escapeRegExp(basename(path))}\\.(\\d{12})$`);
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  return names
    .filter((name) => pattern.test(name))
    .sort()
    .map((name) => join(dir, name));
}

/** The file a new current file is written to before it is renamed into place. */
export function nextFileName(path: string): string {
  return `${path}.next`;
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** The chain fields every record carries, and the record types the daemon writes itself. */
export interface ChainFields {
  readonly seq: number;
  readonly prev: string;
  readonly type?: string;
}

const HASH = /^[0-9a-f]{64}$/;

/** The record a line holds, or undefined when it is not a chain record (foreign text, a cut line). */
export function parseRecord(line: string): (ChainFields & Record<string, unknown>) | undefined {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return undefined;
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return undefined;
  const record = value as Record<string, unknown>;
  if (!Number.isSafeInteger(record.seq) || (record.seq as number) < 1 || typeof record.prev !== 'string' || !HASH.test(record.prev)) return undefined;
  return record as ChainFields & Record<string, unknown>;
}
