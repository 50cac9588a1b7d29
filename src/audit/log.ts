import { closeSync, fstatSync, openSync, readSync, writeSync } from 'node:fs';
import { open, rename, type FileHandle } from 'node:fs/promises';
import { basename } from 'node:path';
import { BackendUnavailableError } from '../errors';
import { GENESIS, lineHash } from './chain';

/** One private-key operation or denial, as written to the log (seq and prev are added). */
export interface AuditRecord {
  readonly time: string;
  readonly session: string;
  readonly client: { readonly subject: string; readonly fingerprint: string };
  readonly peer: string;
  readonly listener: string;
  readonly operation: string;
  readonly algorithm?: string;
  readonly key?: { readonly name?: string; readonly ski?: string };
  /** 'ok' or the error code. */
  readonly result: string;
  readonly duration_ms: number;
  readonly context?: Readonly<Record<string, string | number>>;
}

export interface AuditLogOptions {
  readonly path: string;
  readonly maxBytes: number;
  readonly flushIntervalMs: number;
  /** Called when the log stops or starts being writable again. */
  readonly onStateChange?: (writable: boolean, error?: Error) => void;
  readonly onWritten?: (records: number) => void;
  /** Called for every failed write attempt (including retries). */
  readonly onWriteError?: (error: Error) => void;
}

/** Serialises a record; the dispatcher builds the same JSON faster from per-session parts. */
export function serializeAuditRecord(record: AuditRecord): string {
  return JSON.stringify(record);
}

interface Pending {
  /** The record as a JSON object text; the chain fields are prepended when it is written. */
  readonly json: string;
  readonly resolve: () => void;
  readonly reject: (err: Error) => void;
}

const RETRY_MS = 1000;

/**
 * The tamper-evident audit log: JSON lines, each carrying `seq` and `prev`, the SHA-256
 * of the line before it. Records are batched: many appends share one write, and the
 * promise append() returns settles when its record has been written (handed to the OS);
 * fsync follows within flushIntervalMs. Records are linked into the chain as they are
 * written, so a rotation's link record and a failed write never break it: a failed write
 * marks the log unwritable (the daemon then refuses key operations), its records stay
 * queued in order, and the write is retried until it succeeds.
 */
export class AuditLog {
  private queue: Pending[] = [];
  private writing = false;
  private scheduled = false;
  private dirty = false;
  private ok = true;
  private closed = false;
  private readonly fsyncTimer: NodeJS.Timeout;
  private retryTimer?: NodeJS.Timeout;
  /** Bytes of a chunk the disk took only part of; they go out before anything else. */
  private tail?: Buffer;

  private constructor(
    private readonly options: AuditLogOptions,
    private file: FileHandle,
    private size: number,
    private seq: number,
    private prev: string,
  ) {
    this.fsyncTimer = setInterval(() => void this.sync(), options.flushIntervalMs).unref();
  }

  /** Opens (or creates) the log and continues the chain from its last record. */
  static async open(options: AuditLogOptions): Promise<AuditLog> {
    const { seq, prev, size, complete } = readTail(options.path);
    const file = await open(options.path, 'a', 0o640);
    const log = new AuditLog(options, file, size, seq, prev);
    if (!complete) {
      // A crash mid-write left a partial line: set it aside as a rotated file (verify will
      // report it) and continue the chain from the last complete record in a new file.
      await log.rotate('the previous file ended with an incomplete record');
    }
    return log;
  }

  writable(): boolean {
    return this.ok;
  }

  /** `json` is one record serialised as a JSON object (see serializeAuditRecord). */
  append(json: string): Promise<void> {
    if (this.closed) return Promise.reject(new BackendUnavailableError('the audit log is closed'));
    return new Promise((resolve, reject) => {
      this.queue.push({ json, resolve, reject });
      if (!this.scheduled && !this.writing) {
        this.scheduled = true;
        setImmediate(() => void this.drain());
      }
    });
  }

  /** Writes everything queued and fsyncs. */
  async flush(): Promise<void> {
    await this.drain();
    await this.sync();
  }

  async close(): Promise<void> {
    await this.flush();
    this.closed = true;
    clearInterval(this.fsyncTimer);
    clearTimeout(this.retryTimer);
    await this.file.close();
  }

  private format(json: string, seq: number, prev: string): string {
    return json === '{}' ? `{"seq":${seq},"prev":"${prev}"}` : `{"seq":${seq},"prev":"${prev}",${json.slice(1)}`;
  }

  private async drain(): Promise<void> {
    this.scheduled = false;
    if (this.writing) return;
    this.writing = true;
    try {
      if (this.tail && !(await this.writeTail())) return;
      while (this.queue.length > 0 && !this.closed) {
        const batch = this.queue;
        this.queue = [];
        if (!(await this.writeBatch(batch))) return;
      }
    } finally {
      this.writing = false;
    }
  }

  /** Writes `batch` in chunks that respect max_bytes, rotating between them. false: a write failed. */
  private async writeBatch(batch: Pending[]): Promise<boolean> {
    let next = 0;
    while (next < batch.length) {
      let seq = this.seq;
      let prev = this.prev;
      let data = '';
      let bytes = 0;
      const start = next;
      while (next < batch.length) {
        const line = `${this.format(batch[next]!.json, seq + 1, prev)}\n`;
        const length = Buffer.byteLength(line);
        if (this.size + bytes + length > this.options.maxBytes && this.size + bytes > 0) break;
        data += line;
        bytes += length;
        seq += 1;
        prev = lineHash(line.slice(0, -1));
        next += 1;
      }
      if (bytes === 0) {
        try {
          await this.rotate();
        } catch (err) {
          this.fail(err as Error, batch.slice(start), []);
          return false;
        }
        continue;
      }
      const buffer = Buffer.from(data);
      const written = await this.writeFully(buffer);
      if (written.error && written.bytes === 0) {
        this.fail(written.error, batch.slice(start), batch.slice(start, next));
        return false;
      }
      // Once any byte of the chunk is on disk the chunk is part of the chain: the rest of
      // its bytes are written, unchanged, before anything else.
      this.seq = seq;
      this.prev = prev;
      this.size += bytes;
      if (written.error) {
        this.tail = buffer.subarray(written.bytes);
        this.fail(written.error, batch.slice(next), batch.slice(start, next));
        return false;
      }
      this.dirty = true;
      this.recovered();
      this.options.onWritten?.(next - start);
      for (let i = start; i < next; i++) batch[i]!.resolve();
    }
    return true;
  }

  /**
   * Synchronous on purpose: a batch goes to the page cache in microseconds, while a trip
   * through the libuv pool added ~0.1 ms to every answer. fdatasync stays asynchronous.
   */
  private async writeFully(buffer: Buffer): Promise<{ bytes: number; error?: Error }> {
    let bytes = 0;
    try {
      while (bytes < buffer.length) bytes += writeSync(this.file.fd, buffer, bytes);
      return { bytes };
    } catch (err) {
      return { bytes, error: err as Error };
    }
  }

  private async writeTail(): Promise<boolean> {
    const written = await this.writeFully(this.tail!);
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
    const requeued: Pending[] = unwritten.map((p) => (failedChunk.includes(p) ? { json: p.json, resolve: () => {}, reject: () => {} } : p));
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

  /** Renames the current file to PATH.<last seq> and starts a new one with a link record. */
  private async rotate(note?: string): Promise<void> {
    await this.file.datasync().catch(() => {});
    await this.file.close();
    const rotated = `${this.options.path}.${String(this.seq).padStart(12, '0')}`;
    await rename(this.options.path, rotated);
    this.file = await open(this.options.path, 'a', 0o640);
    const line = this.format(JSON.stringify({ type: 'rotate', time: new Date().toISOString(), prev_file: basename(rotated), ...(note ? { note } : {}) }), this.seq + 1, this.prev);
    await this.file.write(`${line}\n`);
    this.seq += 1;
    this.prev = lineHash(line);
    this.size = Buffer.byteLength(line) + 1;
  }
}

/** The chain state at the end of an existing log file (or genesis for a new one). */
function readTail(path: string): { seq: number; prev: string; size: number; complete: boolean } {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch {
    return { seq: 0, prev: GENESIS, size: 0, complete: true };
  }
  try {
    const size = fstatSync(fd).size;
    if (size === 0) return { seq: 0, prev: GENESIS, size: 0, complete: true };
    const length = Math.min(size, 1 << 20);
    const buffer = Buffer.alloc(length);
    readSync(fd, buffer, 0, length, size - length);
    const text = buffer.toString('utf8');
    const complete = text.endsWith('\n');
    const lines = text.split('\n').filter((l) => l.length > 0);
    const last = complete ? lines[lines.length - 1] : lines[lines.length - 2];
    if (last === undefined) throw new Error(`${path}: cannot find a complete record in its last MiB`);
    const parsed = JSON.parse(last) as { seq: number };
    return { seq: parsed.seq, prev: lineHash(last), size, complete };
  } finally {
    closeSync(fd);
  }
}
