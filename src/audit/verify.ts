import { existsSync, readFileSync } from 'node:fs';
import type { KeyObject } from 'node:crypto';
import { basename } from 'node:path';
import { KeylessdError } from '../errors';
import { GENESIS, lineHash } from './chain';
import { parseRecord, rotatedFiles, type ChainFields } from './files';
import { checkSignature } from './signing';

export interface VerifyOptions {
  /** The audit signing public key: every checkpoint and retention record must carry a valid signature. */
  readonly publicKey?: KeyObject;
  /** A checkpoint line kept off the host: the log must still contain exactly that record. */
  readonly anchor?: string;
}

export type VerifyResult =
  | { readonly ok: true; readonly records: number; readonly files: number; readonly firstSeq: number; readonly lastSeq: number; readonly checkpoints: number; readonly signaturesChecked: number }
  | { readonly ok: false; readonly file: string; readonly line: number; readonly reason: string };

/** The files of the log at `path`, oldest first: its rotated files, then the current file if it exists. */
export function auditLogFiles(path: string): string[] {
  return [...rotatedFiles(path), ...(existsSync(path) ? [path] : [])];
}

interface Entry {
  readonly file: string;
  readonly line: number;
  readonly text: string;
  readonly hash: string;
  readonly record: ChainFields & Record<string, unknown>;
}

class Failure extends KeylessdError {
  readonly code = 'AUDIT_CHAIN_BROKEN';

  constructor(
    readonly at: { file: string; line: number },
    reason: string,
  ) {
    super(reason);
  }
}

const SIGNED_TYPES = new Set(['checkpoint', 'retention']);

/**
 * Checks the log given as its files, oldest first (rotated files, then the current one):
 * every line is a record; each record's `prev` is the hash of the record before it and its
 * `seq` one more; the oldest record is the genesis record, unless a retention record says
 * which records before it were removed; rotated files follow each other. With a public key
 * every signed record must verify; with an anchor the log must still hold that record.
 * A failure names the first record that is wrong.
 */
export function verifyAuditFiles(paths: readonly string[], options: VerifyOptions = {}): VerifyResult {
  try {
    return run(paths, options);
  } catch (err) {
    if (err instanceof Failure) return { ok: false, ...err.at, reason: err.message };
    throw err;
  }
}

function run(paths: readonly string[], options: VerifyOptions): VerifyResult {
  if (paths.length === 0) throw new Failure({ file: '', line: 0 }, 'no audit log files found');
  const anchor = options.anchor === undefined ? undefined : parseAnchor(options.anchor, options.publicKey);
  let first: Entry | undefined;
  let before: Entry | undefined;
  let last: Entry | undefined;
  /** A record whose prev does not match: it or the one before it was altered; the next record decides. */
  let suspect: { before: Entry; entry: Entry } | undefined;
  let records = 0;
  let checkpoints = 0;
  let signaturesChecked = 0;
  let anchorFound = false;
  const retention: Array<{ seq: number; prev: string }> = [];
  let previousFile: string | undefined;

  for (const path of paths) {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      throw new Failure({ file: path, line: 0 }, `cannot read it: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    if (text.length === 0) throw new Failure({ file: path, line: 1 }, 'the file is empty: every file the daemon starts holds a record, so it was emptied');
    const lines = text.split('\n');
    if (lines[lines.length - 1] !== '') {
      throw new Failure({ file: path, line: lines.length }, 'the last record is truncated (no newline): the file was cut or a write was interrupted');
    }
    lines.pop();
    for (let i = 0; i < lines.length; i++) {
      const at = { file: path, line: i + 1 };
      const record = parseRecord(lines[i]!);
      if (!record) throw new Failure(at, 'not an audit record (not JSON, or no seq/prev chain fields): the line was altered or added by hand');
      const entry: Entry = { ...at, text: lines[i]!, hash: lineHash(lines[i]!), record };
      if (suspect) {
        if (record.prev === suspect.entry.hash) {
          throw new Failure(suspect.before, `record ${suspect.before.record.seq} was altered: its hash does not match the prev of record ${suspect.entry.record.seq}`);
        }
        throw new Failure(suspect.entry, `record ${suspect.entry.record.seq} was altered: its prev does not match record ${suspect.before.record.seq}, and its hash does not match the prev of record ${record.seq}`);
      }
      if (before === undefined) {
        first = entry;
      } else {
        const expected = before.record.seq + 1;
        if (record.seq !== expected) {
          const what =
            record.seq > expected
              ? `${record.seq - 1 > expected ? `records ${expected}–${record.seq - 1} are` : `record ${expected} is`} missing: deleted${i === 0 ? ' (with the file that held them, or cut from its end)' : ''}`
              : 'records were reordered or inserted';
          throw new Failure(at, `expected record ${expected}, found ${record.seq}: ${what}`);
        }
        if (record.prev !== before.hash) suspect = { before, entry };
      }
      if (i === 0 && previousFile !== undefined && record.type === 'rotate' && record.prev_file !== basename(previousFile)) {
        throw new Failure(at, `this file continues ${String(record.prev_file)}, but the file given before it is ${basename(previousFile)}`);
      }
      if (typeof record.type === 'string' && SIGNED_TYPES.has(record.type)) {
        if (record.type === 'checkpoint') checkpoints += 1;
        if (record.type === 'retention') {
          const kept = record.kept_from as { seq?: unknown; prev?: unknown } | undefined;
          if (kept && typeof kept.seq === 'number' && typeof kept.prev === 'string') retention.push({ seq: kept.seq, prev: kept.prev });
        }
        if (options.publicKey) {
          const problem = checkSignature(entry.text, options.publicKey);
          if (problem) throw new Failure(at, `${record.type} record ${record.seq}: ${problem}`);
          signaturesChecked += 1;
        }
      }
      if (anchor && record.seq === anchor.seq) {
        if (entry.text !== anchor.text) throw new Failure(at, `record ${record.seq} is not the anchored checkpoint: the log was rewritten`);
        anchorFound = true;
      }
      before = entry;
      last = entry;
      records += 1;
    }
    previousFile = path;
  }
  if (suspect) {
    throw new Failure(suspect.before, `record ${suspect.before.record.seq} was altered, or the prev of record ${suspect.entry.record.seq} (the last) was: they do not match`);
  }
  checkHead(first!, retention);
  if (anchor && !anchorFound) {
    const reason =
      anchor.seq > last!.record.seq
        ? `the anchored checkpoint is record ${anchor.seq}, but the log ends at record ${last!.record.seq}: records were cut off its end`
        : `the anchored checkpoint (record ${anchor.seq}) is no longer in the log: its file was removed`;
    throw new Failure({ file: last!.file, line: last!.line }, reason);
  }
  return { ok: true, records, files: paths.length, firstSeq: first!.record.seq, lastSeq: last!.record.seq, checkpoints, signaturesChecked };
}

/** The oldest record present must be the genesis record, or the first one a retention record kept. */
function checkHead(first: Entry, retention: ReadonlyArray<{ seq: number; prev: string }>): void {
  const { seq, prev } = first.record;
  if (seq === 1) {
    if (prev !== GENESIS) throw new Failure(first, 'record 1 does not start from the genesis hash');
    return;
  }
  if (retention.some((kept) => kept.seq === seq && kept.prev === prev)) return;
  throw new Failure(
    first,
    `the oldest record present is ${seq}, not the genesis record, and no retention record accounts for records 1–${seq - 1}: the head of the log was cut or its oldest files were deleted`,
  );
}

function parseAnchor(text: string, publicKey?: KeyObject): { seq: number; text: string } {
  const line = text.trim();
  const record = parseRecord(line);
  if (!record || record.type !== 'checkpoint') throw new Failure({ file: 'anchor', line: 1 }, 'the anchor is not a checkpoint record (use the line `keylessctl audit checkpoint` printed)');
  if (publicKey) {
    const problem = checkSignature(line, publicKey);
    if (problem) throw new Failure({ file: 'anchor', line: 1 }, `the anchor checkpoint: ${problem}`);
  }
  return { seq: record.seq, text: line };
}

/** The newest checkpoint record of the log at `path` (the line as written), if any. */
export function latestCheckpoint(path: string): string | undefined {
  const files = auditLogFiles(path);
  for (let f = files.length - 1; f >= 0; f--) {
    const lines = readFileSync(files[f]!, 'utf8').split('\n');
    for (let i = lines.length - 1; i >= 0; i--) {
      const record = parseRecord(lines[i]!);
      if (record?.type === 'checkpoint') return lines[i];
    }
  }
  return undefined;
}
