import { closeSync, linkSync, openSync, readSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { open, rename, type FileHandle } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import { BackendUnavailableError } from '../errors';
import { lineHash } from './chain';
import { lastSeqOf, nextFileName, parseRecord, rotatedFiles, rotatedName } from './files';
import { freshName, moveExclusive, recoverLog, syncDirectory, type RecoveryEvent } from './recover';
import type { AuditSigner } from './signing';

/** What the log tells its owner, to be logged and counted. */
export type AuditEvent =
  | RecoveryEvent
  | { readonly type: 'genesis' | 'resumed'; readonly file: string; readonly detail: string }
  | { readonly type: 'reopened'; readonly reason: string }
  | { readonly type: 'checkpoint'; readonly line: string }
  | { readonly type: 'retention'; readonly removed: readonly string[] };

export interface AuditLogOptions {
  readonly path: string;
  readonly maxBytes: number;
  readonly flushIntervalMs: number;
  /** Signs checkpoints and retention records; without it neither is signed and no checkpoint is written. */
  readonly signer?: AuditSigner;
  /** A checkpoint after this many records… */
  readonly checkpointEveryRecords?: number;
  /** …or this long after the last one, if any record was written since; and one at close. */
  readonly checkpointIntervalMs?: number;
  /** Retention: rotated files kept at most (oldest deleted first, with a retention record). */
  readonly keepFiles?: number;
  /** Retention: bytes of all files together at most. */
  readonly maxTotalBytes?: number;
  /** Called when the log stops or starts being writable again. */
  readonly onStateChange?: (writable: boolean, error?: Error) => void;
  readonly onWritten?: (records: number) => void;
  /** Called for every failed write attempt (including retries). */
  readonly onWriteError?: (error: Error) => void;
  readonly onEvent?: (event: AuditEvent) => void;
}

interface Pending {
  /**
   * The record: a JSON object the chain fields are put in front of, or, for records that
   * depend on their place in the chain (signed ones), the whole line (without newline)
   * for record `seq` whose predecessor hashes to `prev`.
   */
  readonly line: string | ((seq: number, prev: string) => string);
  readonly resolve: () => void;
  readonly reject: (err: Error) => void;
}

const RETRY_MS = 1000;
/** What writeChunks returns besides the index of a record that needs a new file. */
const WRITTEN = -1;
const FAILED = -2;
/** The scratch buffer's size: a chunk is at most this many bytes (a longer single record grows it). */
const SCRATCH_BYTES = 256 * 1024;
const NOTHING = () => {};

/** `{"seq":…,"prev":…,<fields of json>}`: the chain fields always come first. */
function chained(json: string, seq: number, prev: string): string {
  return json === '{}' ? `{"seq":${seq},"prev":"${prev}"}` : `{"seq":${seq},"prev":"${prev}",${json.slice(1)}`;
}

/** The first record of a file: its seq and prev say where in the chain the file starts. */
function firstRecord(path: string): { seq: number; prev: string } | undefined {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch {
    return undefined;
  }
  try {
    const buffer = Buffer.alloc(64 * 1024);
    const length = readSync(fd, buffer, 0, buffer.length, 0);
    const end = buffer.subarray(0, length).indexOf(0x0a);
    const record = parseRecord(buffer.subarray(0, end < 0 ? length : end).toString('utf8'));
    return record && { seq: record.seq, prev: record.prev };
  } finally {
    closeSync(fd);
  }
}

/**
 * The tamper-evident audit log: JSON lines, each carrying `seq` and `prev`, the SHA-256
 * of the line before it; a new log starts with a genesis record. Records are batched:
 * many appends share one write, and the promise append() returns settles when its record
 * has been written (handed to the OS); fsync follows within flushIntervalMs.
 *
 * Nothing is lost or silently restarted: a start continues the chain from the newest
 * record on disk (see recoverLog); rotation links the full file to its rotated name
 * before a new file replaces it, so a crash at any point leaves every record in some file;
 * a file removed or replaced while the daemon runs is noticed before the next batch and a
 * new file continues the chain, saying so. A failed write marks the log unwritable (the
 * daemon then refuses key operations), its records stay queued in order, and the write is
 * retried until it succeeds.
 */
export class AuditLog {
  private queue: Pending[] = [];
  private writing = false;
  private scheduled = false;
  private dirty = false;
  private ok = true;
  private closed = false;
  private readonly timer: NodeJS.Timeout;
  private retryTimer?: NodeJS.Timeout;
  /** Bytes of a chunk the disk took only part of; they go out before anything else. */
  private tail?: Buffer;
  /** Where a chunk's lines are encoded before their one write: reused, so a batch allocates no buffer. */
  private scratch = Buffer.allocUnsafe(SCRATCH_BYTES);
  private sinceCheckpoint = 0;
  private lastCheckpoint = Date.now();
  private retentionDue = false;

  private constructor(
    private readonly options: AuditLogOptions,
    private file: FileHandle,
    private identity: { ino: number; dev: number },
    private size: number,
    private seq: number,
    private prev: string,
  ) {
    this.timer = setInterval(() => void this.tick(), options.flushIntervalMs).unref();
  }

  /** Opens (or creates) the log and continues the chain from the newest record on disk. */
  static async open(options: AuditLogOptions): Promise<AuditLog> {
    const { path } = options;
    const recovered = recoverLog(path);
    let { seq, prev } = recovered.head;
    const firstLines: Array<(seq: number, prev: string) => string> = [];
    const events: AuditEvent[] = [...recovered.events];
    if (recovered.currentSize === undefined) {
      const time = new Date().toISOString();
      if (recovered.continues) {
        const detail = `${basename(path)} was missing at start; the chain continues from ${basename(recovered.continues)}`;
        firstLines.push((s, p) => chained(JSON.stringify({ type: 'rotate', time, prev_file: basename(recovered.continues!), note: detail }), s, p));
        events.push({ type: 'resumed', file: basename(recovered.continues), detail });
      } else {
        firstLines.push((s, p) => chained(JSON.stringify({ type: 'genesis', time, log: 'keylessd audit log' }), s, p));
        events.push({ type: 'genesis', file: basename(path), detail: 'a new audit log was started' });
      }
    }
    for (const event of recovered.events) {
      firstLines.push((s, p) => chained(JSON.stringify({ time: new Date().toISOString(), ...event }), s, p));
    }
    let size = recovered.currentSize ?? 0;
    let file: FileHandle;
    if (recovered.currentSize === undefined) {
      const first = firstLines.shift()!(seq + 1, prev);
      file = await createFileWith(path, first);
      seq += 1;
      prev = lineHash(first);
      size = Buffer.byteLength(first) + 1;
    } else {
      file = await open(path, 'a', 0o640);
    }
    const stat = await file.stat();
    const log = new AuditLog(options, file, { ino: stat.ino, dev: stat.dev }, size, seq, prev);
    for (const event of events) options.onEvent?.(event);
    await Promise.all(firstLines.map((line) => log.enqueue(line)));
    return log;
  }

  writable(): boolean {
    return this.ok;
  }

  /** `json` is one record serialised as a JSON object (see serializeAuditRecord). */
  append(json: string): Promise<void> {
    const written = this.enqueue(json);
    if (this.options.signer && ++this.sinceCheckpoint >= (this.options.checkpointEveryRecords ?? 10_000)) void this.checkpoint().catch(NOTHING);
    return written;
  }

  /** Writes everything queued and fsyncs. */
  async flush(): Promise<void> {
    await this.drain();
    await this.sync();
  }

  /** Writes a last checkpoint, flushes and closes. */
  async close(): Promise<void> {
    if (this.closed) return;
    if (this.options.signer && this.sinceCheckpoint > 0) void this.checkpoint().catch(NOTHING);
    await this.flush();
    this.closed = true;
    clearInterval(this.timer);
    clearTimeout(this.retryTimer);
    await this.file.close();
  }

  private enqueue(line: Pending['line']): Promise<void> {
    if (this.closed) return Promise.reject(new BackendUnavailableError('the audit log is closed'));
    return new Promise((resolve, reject) => {
      this.queue.push({ line, resolve, reject });
      if (!this.scheduled && !this.writing) {
        this.scheduled = true;
        setImmediate(() => void this.drain());
      }
    });
  }

  /** A signed record stating that record `seq - 1` hashes to `prev`: an anchor for third parties. */
  private checkpoint(): Promise<void> {
    const signer = this.options.signer!;
    this.sinceCheckpoint = 0;
    this.lastCheckpoint = Date.now();
    let written = '';
    return this.enqueue((seq, prev) => {
      written = signer.sign(chained(JSON.stringify({ type: 'checkpoint', time: new Date().toISOString(), key_id: signer.keyId }), seq, prev));
      return written;
    }).then(() => this.options.onEvent?.({ type: 'checkpoint', line: written }));
  }

  private async tick(): Promise<void> {
    if (this.closed) return;
    if (!this.writing && !this.scheduled) void this.drain();
    if (this.options.signer && this.sinceCheckpoint > 0 && Date.now() - this.lastCheckpoint >= (this.options.checkpointIntervalMs ?? 60_000)) {
      void this.checkpoint().catch(NOTHING);
    }
    await this.sync();
  }

  private async drain(): Promise<void> {
    this.scheduled = false;
    if (this.writing) return;
    this.writing = true;
    try {
      // The file is checked before every batch; with nothing queued (the periodic tick), once here.
      if ((this.tail || this.queue.length === 0) && !(await this.checkFile())) return;
      if (this.tail && !this.writeTail()) return;
      while (this.queue.length > 0 && !this.closed) {
        const same = this.checkFile();
        if (same !== true && !(await same)) return; // no await (and no promise) while the file is the same
        const batch = this.queue;
        this.queue = [];
        for (let from = 0; ; ) {
          const next = this.writeChunks(batch, from);
          if (next === WRITTEN) break;
          if (next === FAILED) return;
          try {
            await this.rotate();
          } catch (err) {
            this.fail(err as Error, batch.slice(next), []);
            return;
          }
          from = next;
        }
      }
      if (this.retentionDue) this.applyRetention();
    } finally {
      this.writing = false;
    }
  }

  /**
   * Whether the path still names the file being written. Someone removing or replacing it
   * would otherwise make every later record vanish with it; instead a new file continues
   * the chain, with a record saying what happened. false: the new file could not be made.
   * Synchronous (a value, not a promise) while the file is the same: the common case.
   */
  private checkFile(): boolean | Promise<boolean> {
    const current = statSync(this.options.path, { throwIfNoEntry: false });
    if (current && current.ino === this.identity.ino && current.dev === this.identity.dev) return true;
    return this.reopen(current !== undefined);
  }

  private async reopen(replaced: boolean): Promise<boolean> {
    const { path } = this.options;
    // A partial chunk belonged to the vanished file; the new file continues from the last whole record.
    this.tail = undefined;
    let reason = replaced ? `${basename(path)} was replaced by another file while the daemon ran` : `${basename(path)} was removed while the daemon ran`;
    try {
      if (replaced) {
        const aside = freshName(path, 'foreign');
        moveExclusive(path, aside);
        reason += ` (that file was set aside as ${basename(aside)})`;
      }
      await this.startFile({ type: 'reopen', time: new Date().toISOString(), reason });
      this.options.onEvent?.({ type: 'reopened', reason });
      return true;
    } catch (err) {
      // Nowhere to write: what is queued is refused now, and kept to be written on the retry.
      const queued = this.queue.splice(0);
      this.fail(err as Error, queued, queued);
      return false;
    }
  }

  /**
   * Writes `batch` from `from` in chunks that respect max_bytes. Returns WRITTEN, FAILED (a
   * write failed; fail() has dealt with it), or the index of the first record that needs
   * a new file (the caller rotates and calls again from there).
   */
  private writeChunks(batch: Pending[], from: number): number {
    let next = from;
    while (next < batch.length) {
      let seq = this.seq;
      let prev = this.prev;
      let bytes = 0;
      const start = next;
      while (next < batch.length) {
        const entry = batch[next]!.line;
        const line = typeof entry === 'string' ? chained(entry, seq + 1, prev) : entry(seq + 1, prev);
        const hash = lineHash(line); // flattens the line once; the copy below reads that
        const length = Buffer.byteLength(line) + 1;
        if (this.size + bytes + length > this.options.maxBytes && this.size + bytes > 0) break;
        if (bytes + length > this.scratch.length) {
          if (bytes > 0) break; // write what is gathered; this line starts the next chunk
          this.scratch = Buffer.allocUnsafe(length); // a record longer than every one before it
        }
        bytes += this.scratch.write(line, bytes);
        this.scratch[bytes++] = 0x0a;
        seq += 1;
        prev = hash;
        next += 1;
      }
      if (bytes === 0) return next;
      const written = this.writeFully(this.scratch, bytes);
      if (written.error && written.bytes === 0) {
        this.fail(written.error, batch.slice(start), batch.slice(start, next));
        return FAILED;
      }
      // Once any byte of the chunk is on disk the chunk is part of the chain: the rest of
      // its bytes are written, unchanged, before anything else.
      this.seq = seq;
      this.prev = prev;
      this.size += bytes;
      if (written.error) {
        this.tail = Buffer.from(this.scratch.subarray(written.bytes, bytes)); // a copy: the scratch buffer is reused
        this.fail(written.error, batch.slice(next), batch.slice(start, next));
        return FAILED;
      }
      this.dirty = true;
      this.recovered();
      this.options.onWritten?.(next - start);
      for (let i = start; i < next; i++) batch[i]!.resolve();
    }
    return WRITTEN;
  }

  /**
   * Synchronous on purpose: a batch goes to the page cache in microseconds, while a trip
   * through the libuv pool added ~0.1 ms to every answer. fdatasync stays asynchronous.
   */
  private writeFully(buffer: Buffer, length = buffer.length): { bytes: number; error?: Error } {
    let bytes = 0;
    try {
      while (bytes < length) bytes += writeSync(this.file.fd, buffer, bytes, length - bytes);
      return { bytes };
    } catch (err) {
      return { bytes, error: err as Error };
    }
  }

  private writeTail(): boolean {
    const written = this.writeFully(this.tail!);
    if (written.error) {
      this.tail = this.tail!.subarray(written.bytes);
      this.fail(written.error, [], []);
      return false;
    }
    this.tail = undefined;
    this.dirty = true;
    this.recovered();
    return true;
  }

  /**
   * Records not written go back to the front of the queue, chain state untouched. The
   * callers of the chunk that failed are told now; the rest wait for the retry.
   */
  private fail(err: Error, unwritten: Pending[], failedChunk: Pending[]): void {
    const wasOk = this.ok;
    this.ok = false;
    this.options.onWriteError?.(err);
    const refusal = new BackendUnavailableError('the audit log cannot be written; the operation was not acknowledged');
    for (const p of failedChunk) p.reject(refusal);
    const requeued: Pending[] = unwritten.map((p) => (failedChunk.includes(p) ? { line: p.line, resolve: NOTHING, reject: NOTHING } : p));
    // (After a partial write the failed chunk is already in the chain and `unwritten` excludes it.)
    this.queue = requeued.concat(this.queue);
    if (wasOk) this.options.onStateChange?.(false, err);
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => void this.drain(), RETRY_MS).unref();
  }

  private recovered(): void {
    if (this.ok) return;
    this.ok = true;
    this.options.onStateChange?.(true);
  }

  private async sync(): Promise<void> {
    if (!this.dirty || this.closed) return;
    this.dirty = false;
    await this.file.datasync().catch(() => {
      this.dirty = true;
    });
  }

  /**
   * Starts a new file, crash-safely and without overwriting anything: the full file is
   * synced and hard-linked to PATH.<last seq> (link fails rather than replace an existing
   * file), then a new file holding the link record is written beside it, synced, and
   * renamed over PATH. A crash before the rename leaves PATH and its rotated name as one
   * file, which the next start recognises; after it, the rotation is complete.
   */
  private async rotate(): Promise<void> {
    const { path } = this.options;
    await this.file.datasync();
    const rotated = rotatedName(path, this.seq);
    // link() fails with EEXIST rather than replace a file: a rotated file is never overwritten.
    linkSync(path, rotated);
    syncDirectory(dirname(path));
    await this.startFile({ type: 'rotate', time: new Date().toISOString(), prev_file: basename(rotated) });
    if (this.options.keepFiles !== undefined || this.options.maxTotalBytes !== undefined) this.retentionDue = true;
  }

  /** Replaces the current file with a new one whose first record is `first`, continuing the chain. */
  private async startFile(first: Record<string, unknown>): Promise<void> {
    const line = chained(JSON.stringify(first), this.seq + 1, this.prev);
    const file = await createFileWith(this.options.path, line);
    await this.file.close().catch(NOTHING);
    this.file = file;
    const stat = await file.stat();
    this.identity = { ino: stat.ino, dev: stat.dev };
    this.seq += 1;
    this.prev = lineHash(line);
    this.size = Buffer.byteLength(line) + 1;
  }

  /**
   * Deletes the oldest rotated files beyond keep_files / max_total_bytes. A (signed)
   * retention record naming them and where the kept chain starts is written and synced
   * first, so verify can tell retention from deletion.
   */
  private applyRetention(): void {
    this.retentionDue = false;
    const { path, keepFiles, maxTotalBytes } = this.options;
    const rotated = rotatedFiles(path);
    const sizes = rotated.map((file) => statSync(file, { throwIfNoEntry: false })?.size ?? 0);
    let total = sizes.reduce((a, b) => a + b, 0) + this.size;
    let remove = 0;
    while (remove < rotated.length && ((keepFiles !== undefined && rotated.length - remove > keepFiles) || (maxTotalBytes !== undefined && total > maxTotalBytes))) {
      total -= sizes[remove]!;
      remove += 1;
    }
    if (remove === 0) return;
    const removed = rotated.slice(0, remove);
    const keptFrom = firstRecord(rotated[remove] ?? path);
    if (!keptFrom) return;
    const description = removed.map((file) => ({ file: basename(file), ...rangeOf(file) }));
    const signer = this.options.signer;
    void this.enqueue((seq, prev) => {
      const unsigned = chained(
        JSON.stringify({ type: 'retention', time: new Date().toISOString(), removed: description, kept_from: keptFrom, ...(signer ? { key_id: signer.keyId } : {}) }),
        seq,
        prev,
      );
      return signer ? signer.sign(unsigned) : unsigned;
    })
      .then(() => this.flush())
      .then(() => {
        for (const file of removed) unlinkSync(file);
        syncDirectory(dirname(path));
        this.options.onEvent?.({ type: 'retention', removed: removed.map((f) => basename(f)) });
      })
      .catch((err: Error) => this.options.onWriteError?.(err));
  }
}

function rangeOf(rotatedFile: string): { first_seq?: number; last_seq: number } {
  return { first_seq: firstRecord(rotatedFile)?.seq, last_seq: lastSeqOf(rotatedFile) };
}

/** Creates `path` holding `line`, atomically: written and synced beside it, then renamed into place. */
async function createFileWith(path: string, line: string): Promise<FileHandle> {
  const temp = nextFileName(path);
  const file = await open(temp, 'wx', 0o640);
  try {
    await file.write(`${line}\n`);
    await file.datasync();
  } catch (err) {
    await file.close().catch(NOTHING);
    throw err;
  }
  await file.close();
  await rename(temp, path);
  syncDirectory(dirname(path));
  return open(path, 'a', 0o640);
}
