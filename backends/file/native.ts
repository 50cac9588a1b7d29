import { availableParallelism } from 'node:os';
import { loadAddon } from '../../src/util/package-root';

/** Operation and hash numbers shared with openssl_keys.c. */
export const NativeOp = { rsaPkcs1: 0, rsaPss: 1, ecdsa: 2, ed25519: 3, decryptRaw: 4, decryptOaepSha256: 5 } as const;
export const NativeHash = { none: 0, sha1: 1, sha224: 2, sha256: 3, sha384: 4, sha512: 5 } as const;

export type NativeKey = { readonly __nativeKey: unique symbol };
export type NativeQueueHandle = { readonly __nativeQueue: unique symbol };

interface NativeAddon {
  loadKey(pkcs8Der: Buffer): NativeKey;
  /** The batched queue: `threads` workers; every result finished by a wake-up comes back in one onDone call. */
  start(threads: number, onDone: (results: Array<number | Buffer | string>) => void): NativeQueueHandle;
  submit(queue: NativeQueueHandle, key: NativeKey, op: number, hash: number, input: Buffer, slot: number): void;
  /** Hands the submitted operations to the workers; a lone ECDSA/Ed25519 one with the workers idle runs inline and its result comes back here. */
  flush(queue: NativeQueueHandle): Array<number | Buffer | string> | undefined;
  idle(queue: NativeQueueHandle): void;
}

let addon: NativeAddon | undefined;

/** The OpenSSL addon built by `npm ci` (binding.gyp); loaded on first use. */
export function nativeAddon(): NativeAddon {
  addon ??= loadAddon<NativeAddon>('keyless_openssl', 'the native signer');
  return addon;
}

interface Waiter {
  resolve(value: Buffer): void;
  reject(err: Error): void;
  /** Turns the addon's error text into the error the caller sees (only on failure). */
  readonly failure: (message: string) => Error;
}

/**
 * Threads doing the file keys' private-key operations: one per core, at most libuv's pool
 * size (UV_THREADPOOL_SIZE, 4 by default) that the fair scheduler's parallelism assumes.
 * More threads than cores only add context switches: operations beyond them wait in the
 * queue, in the order the scheduler released them.
 */
export const NATIVE_THREADS = Math.max(1, Math.min(Number(process.env.UV_THREADPOOL_SIZE) || 4, availableParallelism()));

/**
 * The file backend's path to the addon's batched queue. Operations submitted in one turn
 * of the event loop go to the worker threads in one hand-off, in a microtask right after the
 * TLS chunk that brought them; but ECDSA and Ed25519 operations that find every thread busy
 * wait for the loop's check phase, after every chunk read in the turn has been dispatched:
 * one lock and one wake-up per turn rather than per chunk, where the hand-off is a
 * noticeable part of an 18 us signature (measured in docs/benchmarks.md). Every result
 * finished by the time the main thread wakes comes back in one call, which settles each
 * waiting promise. An operation that comes alone while every thread is idle runs inline in
 * flush instead (openssl_keys.c, runs_inline: cheaper than two thread hand-offs): ECDSA and
 * Ed25519 always, RSA up to 2,048 bits only after 1 ms with nothing in flight. Slots are
 * small integers reused through a free list.
 */
export class NativeQueue {
  private readonly waiters: Array<Waiter | undefined> = [];
  private readonly free: number[] = [];
  private outstanding = 0;
  private flushQueued = false;
  private readonly handle: NativeQueueHandle;
  private readonly flush = (): void => {
    this.flushQueued = false;
    const ranInline = this.addon.flush(this.handle);
    if (ranInline) this.deliver(ranInline);
  };

  constructor(private readonly addon: NativeAddon = nativeAddon()) {
    this.handle = addon.start(NATIVE_THREADS, (results) => this.deliver(results));
  }

  run(key: NativeKey, op: number, hash: number, input: Buffer, failure: (message: string) => Error): Promise<Buffer> {
    return new Promise<Buffer>((resolve, reject) => {
      const slot = this.free.pop() ?? this.waiters.length;
      this.addon.submit(this.handle, key, op, hash, input, slot); // throws on bad arguments: the promise rejects
      this.waiters[slot] = { resolve, reject, failure };
      if (!this.flushQueued) {
        this.flushQueued = true;
        // Handed over at once while a thread may be idle (so the request does not wait for the
        // rest of the turn) and for RSA (a thread that finishes early should find the next
        // 250 us of work queued). Only a cheap operation with every thread busy waits for the
        // check phase, gathered with the rest of the turn's into one hand-off.
        if (this.outstanding >= NATIVE_THREADS && (op === NativeOp.ecdsa || op === NativeOp.ed25519)) setImmediate(this.flush);
        else queueMicrotask(this.flush);
      }
      this.outstanding += 1;
    });
  }

  private deliver(results: Array<number | Buffer | string>): void {
    for (let i = 0; i < results.length; i += 2) {
      const slot = results[i] as number;
      const waiter = this.waiters[slot]!;
      this.waiters[slot] = undefined;
      this.free.push(slot);
      this.outstanding -= 1;
      const value = results[i + 1]!;
      if (typeof value === 'string') waiter.reject(waiter.failure(value));
      else waiter.resolve(value as Buffer);
    }
    if (this.outstanding === 0) this.addon.idle(this.handle);
  }
}

let queue: NativeQueue | undefined;

/** The process's one batched queue, started on first use. */
export function nativeQueue(): NativeQueue {
  queue ??= new NativeQueue();
  return queue;
}
