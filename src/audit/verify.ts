import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { GENESIS, lineHash } from './chain';

export type VerifyResult = { readonly ok: true; readonly records: number } | { readonly ok: false; readonly file: string; readonly line: number; readonly reason: string };

/**
 * Checks the hash chain across `paths`, given oldest first (rotated files, then the
 * current one). The first file may start anywhere in the chain (older files may have
 * been archived); from there every record must link to the one before it.
 */
export function verifyAuditFiles(paths: readonly string[]): VerifyResult {
  let prev: string | undefined;
  let seq: number | undefined;
  let records = 0;
  let previousFile: string | undefined;
  let previousAt = { file: '', line: 0 };
  for (const path of paths) {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      return { ok: false, file: path, line: 0, reason: `cannot read it: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}` };
    }
    if (text.length > 0 && !text.endsWith('\n')) {
      const lineCount = text.split('\n').length;
      return { ok: false, file: path, line: lineCount, reason: 'the last record is truncated (no newline): the file was cut or a write was interrupted' };
    }
    const lines = text.split('\n').slice(0, -1);
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i]!;
      const at = { file: path, line: i + 1 };
      let record: { seq?: unknown; prev?: unknown; type?: unknown; prev_file?: unknown };
      try {
        record = JSON.parse(line) as typeof record;
      } catch {
        return { ok: false, ...at, reason: 'not a JSON record: the line was altered' };
      }
      if (typeof record.seq !== 'number' || typeof record.prev !== 'string') return { ok: false, ...at, reason: 'record has no seq/prev chain fields' };
      if (prev === undefined) {
        if (record.seq === 1 && record.prev !== GENESIS) return { ok: false, ...at, reason: 'the first record does not start from the genesis hash' };
      } else {
        if (record.prev !== prev) {
          if (record.seq === seq! + 1) return { ok: false, ...previousAt, reason: `record ${seq} was altered: its hash does not match the prev of record ${record.seq}` };
          return { ok: false, ...at, reason: `expected record ${seq! + 1}, found ${record.seq}: records were deleted, reordered or inserted` };
        }
        if (record.seq !== seq! + 1) return { ok: false, ...at, reason: `expected record ${seq! + 1}, found ${record.seq}` };
      }
      if (i === 0 && previousFile !== undefined && record.type === 'rotate' && record.prev_file !== basename(previousFile)) {
        return { ok: false, ...at, reason: `this file continues ${String(record.prev_file)}, but the file given before it is ${basename(previousFile)}` };
      }
      prev = lineHash(line);
      seq = record.seq;
      previousAt = at;
      records += 1;
    }
    previousFile = path;
  }
  return { ok: true, records };
}
