import { createHash } from 'node:crypto';
import { closeSync, existsSync, fstatSync, fsyncSync, ftruncateSync, linkSync, openSync, readSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { basename, dirname } from 'node:path';
import { KeylessdError } from '../errors';
import { GENESIS, lineHash } from './chain';
import { nextFileName, parseRecord, rotatedFiles } from './files';

/** Where the chain stands: the last record on disk (or genesis), and the current file's size. */
export interface ChainHead {
  readonly seq: number;
  readonly prev: string;
}

/** Something the start found and repaired; each becomes a record in the log and a log line. */
export type RecoveryEvent =
  | { readonly type: 'set_aside'; readonly file: string; readonly bytes: number; readonly sha256: string; readonly reason: string }
  | { readonly type: 'removed_duplicate'; readonly file: string; readonly reason: string };

export interface Recovered {
  readonly head: ChainHead;
  /** undefined: there is no current file; the writer starts one (genesis, or linked to `continues`). */
  readonly currentSize?: number;
  /** The rotated file the chain continues from when the current file had to be started anew. */
  readonly continues?: string;
  readonly events: readonly RecoveryEvent[];
}

/** Reads at most this much of a file's end to find its last record. */
const TAIL_BYTES = 4 << 20;

export function stamp(): string {
  return new Date().toISOString().replace(/[-:]/g, '').replace('.', '');
}

/** fsync of a directory, so a rename or link in it survives a power cut. */
export function syncDirectory(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** A name beside `path` that does not exist yet (never overwrite anything in the log folder). */
export function freshName(path: string, label: string): string {
  for (let i = 0; ; i++) {
    const candidate = `${path}.${label}-${stamp()}${i === 0 ? '' : `-${i}`}`;
    if (!existsSync(candidate)) return candidate;
  }
}

/** Moves `path` to `target` without ever replacing an existing file (link fails with EEXIST). */
export function moveExclusive(path: string, target: string): void {
  linkSync(path, target);
  unlinkSync(path);
}

interface Tail {
  /** The last valid record and the byte offset just past its line (and newline). */
  readonly last?: { readonly seq: number; readonly hash: string; readonly end: number; readonly newline: boolean };
  readonly size: number;
}

/** Finds the last line of `path` that is a chain record, looking back from its end. */
export function readTail(path: string): Tail {
  const fd = openSync(path, 'r');
  try {
    const size = fstatSync(fd).size;
    const length = Math.min(size, TAIL_BYTES);
    const buffer = Buffer.alloc(length);
    readSync(fd, buffer, 0, length, size - length);
    const start = size - length;
    let end = length;
    // Walk back line by line; the first line in a partial chunk may be cut, so it is skipped
    // unless the chunk is the whole file.
    while (end > 0) {
      const newline = buffer[end - 1] === 0x0a;
      const lineEnd = newline ? end - 1 : end;
      const lineStart = buffer.lastIndexOf(0x0a, lineEnd - 1) + 1;
      if (lineStart === 0 && start > 0) break;
      const line = buffer.subarray(lineStart, lineEnd).toString('utf8');
      const record = parseRecord(line);
      if (record) return { last: { seq: record.seq, hash: lineHash(line), end: start + end, newline }, size };
      end = lineStart;
    }
    return { size };
  } finally {
    closeSync(fd);
  }
}

function sha256Of(path: string, from: number, to: number): { bytes: Buffer; sha256: string } {
  const fd = openSync(path, 'r');
  try {
    const bytes = Buffer.alloc(to - from);
    readSync(fd, bytes, 0, bytes.length, from);
    return { bytes, sha256: createHash('sha256').update(bytes).digest('hex') };
  } finally {
    closeSync(fd);
  }
}

/** Copies bytes `from`..end of `path` into a new side file and cuts them off `path`. */
function setAsideTail(path: string, from: number, size: number, reason: string): RecoveryEvent {
  const { bytes, sha256 } = sha256Of(path, from, size);
  const aside = freshName(path, 'damaged');
  const out = openSync(aside, 'wx', 0o640);
  try {
    writeSync(out, bytes);
    fsyncSync(out);
  } finally {
    closeSync(out);
  }
  const fd = openSync(path, 'r+');
  try {
    ftruncateSync(fd, from);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  syncDirectory(dirname(path));
  return { type: 'set_aside', file: basename(aside), bytes: bytes.length, sha256, reason };
}

/** The audit log's path names something recovery must not touch (not a regular file). */
export class AuditFileError extends KeylessdError {
  readonly code = 'AUDIT_FILE';
}

/**
 * Brings the log at `path` to a state the writer can continue: removes what an interrupted
 * rotation left behind, sets aside a damaged or foreign tail (keeping its bytes in a side
 * file named in the log), and finds the newest record on disk, in the current file or, when
 * that is missing or holds no record, in the newest rotated file. Never overwrites a file.
 */
export function recoverLog(path: string): Recovered {
  const events: RecoveryEvent[] = [];
  const existing = statSync(path, { throwIfNoEntry: false });
  // Recovery renames, truncates and unlinks: never anything but a regular file (think /dev/full).
  if (existing && !existing.isFile()) throw new AuditFileError(`${path} is not a regular file`);
  // A new file written for a rotation but never renamed into place: it holds only the link
  // record, which the writer writes again.
  if (existsSync(nextFileName(path))) unlinkSync(nextFileName(path));
  const rotated = rotatedFiles(path);
  const newest = rotated[rotated.length - 1];
  if (newest && existsSync(path)) {
    const current = statSync(path);
    const last = statSync(newest);
    if (current.ino === last.ino && current.dev === last.dev) {
      // The rotation linked the file to its rotated name and stopped before the new file
      // replaced it: every record is in the rotated file.
      unlinkSync(path);
      events.push({ type: 'removed_duplicate', file: basename(path), reason: `a rotation was interrupted; its records are all in ${basename(newest)}` });
    }
  }
  if (existsSync(path)) {
    const tail = readTail(path);
    if (tail.last) {
      if (tail.last.end < tail.size) {
        events.push(setAsideTail(path, tail.last.end, tail.size, 'the file ended with bytes that are not a complete audit record (a cut write or text appended by hand)'));
      }
      let size = tail.last.end;
      if (!tail.last.newline) {
        // The record is whole but its newline was not written: complete the line.
        const fd = openSync(path, 'a');
        try {
          writeSync(fd, '\n');
          fsyncSync(fd);
        } finally {
          closeSync(fd);
        }
        size += 1;
      }
      return { head: { seq: tail.last.seq, prev: tail.last.hash }, currentSize: size, events };
    }
    if (tail.size > 0) {
      const aside = freshName(path, 'damaged');
      const { sha256 } = sha256Of(path, 0, tail.size);
      moveExclusive(path, aside);
      syncDirectory(dirname(path));
      events.push({ type: 'set_aside', file: basename(aside), bytes: tail.size, sha256, reason: `${basename(path)} held no audit record` });
    } else {
      unlinkSync(path);
    }
  }
  for (let i = rotated.length - 1; i >= 0; i--) {
    const tail = readTail(rotated[i]!);
    if (tail.last) return { head: { seq: tail.last.seq, prev: tail.last.hash }, continues: rotated[i], events };
  }
  return { head: { seq: 0, prev: GENESIS }, events };
}
