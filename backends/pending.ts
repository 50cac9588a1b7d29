import { OverloadedError } from '../src/errors';

/** How an answer that never comes ends: after `ms`, the request rejects with `error()`. */
export interface Deadline {
  readonly ms: number;
  readonly error: () => Error;
}

interface Entry<T> {
  readonly resolve: (value: T) => void;
  readonly reject: (err: Error) => void;
  readonly timer?: NodeJS.Timeout;
}

/**
 * Requests a backend has sent and not yet had answered, each under a numeric id, every
 * backend's one registry of them: the PKCS#11 worker thread's calls, the CNG shim's frames
 * and the callers queued for a PKCS#11 session. An answer settles its request by id (or,
 * for a queue, the oldest); a request may carry its own deadline; when the other side is
 * gone every request still waiting is rejected at once. Ids run from 1 to `maxId` and
 * wrap (a wire format may have only 32 bits for them), passing over any still waiting.
 */
export class PendingRequests<T> {
  private readonly waiting = new Map<number, Entry<T>>();
  private nextId = 1;

  constructor(private readonly maxId = 0xffffffff) {}

  get size(): number {
    return this.waiting.size;
  }

  /**
   * Registers a request and hands its id to `send`, which puts it on its way; resolves with
   * the answer. A `send` that throws rejects the request with what it threw.
   */
  add(send: (id: number) => void, deadline?: Deadline): Promise<T> {
    if (this.waiting.size >= this.maxId) return Promise.reject(new OverloadedError(`${this.maxId} requests are already waiting`));
    let id = this.advance();
    while (this.waiting.has(id)) id = this.advance(); // one still waiting after the ids wrapped
    return new Promise<T>((resolve, reject) => {
      const timer = deadline
        ? setTimeout(() => {
            if (this.waiting.delete(id)) reject(deadline.error());
          }, deadline.ms)
        : undefined;
      this.waiting.set(id, { resolve, reject, timer });
      try {
        send(id);
      } catch (err) {
        this.take(id);
        reject(err as Error);
      }
    });
  }

  /** Answers request `id`; false when it is not waiting (answered, timed out, or never sent). */
  resolve(id: number, value: T): boolean {
    const entry = this.take(id);
    entry?.resolve(value);
    return entry !== undefined;
  }

  reject(id: number, err: Error): boolean {
    const entry = this.take(id);
    entry?.reject(err);
    return entry !== undefined;
  }

  /** Answers the request waiting longest: a FIFO queue's turn. false when none waits. */
  resolveOldest(value: T): boolean {
    const oldest = this.waiting.keys().next();
    return !oldest.done && this.resolve(oldest.value, value);
  }

  /** The other side is gone: every request still waiting fails with `err`. */
  rejectAll(err: Error): void {
    const entries = [...this.waiting.values()];
    this.waiting.clear();
    for (const entry of entries) {
      clearTimeout(entry.timer);
      entry.reject(err);
    }
  }

  private advance(): number {
    const id = this.nextId;
    this.nextId = id >= this.maxId ? 1 : id + 1;
    return id;
  }

  private take(id: number): Entry<T> | undefined {
    const entry = this.waiting.get(id);
    if (!entry) return undefined;
    this.waiting.delete(id);
    clearTimeout(entry.timer);
    return entry;
  }
}
