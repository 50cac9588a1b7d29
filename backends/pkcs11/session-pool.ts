import type { Handle } from 'pkcs11js';
import { BackendUnavailableError } from '../../src/errors';

/** A session lent for one operation; `generation` tells a returning lease from before a recovery. */
export interface Lease {
  readonly session: Handle;
  readonly generation: number;
}

interface Waiter {
  resolve(lease: Lease): void;
  reject(err: Error): void;
}

/**
 * Open sessions on one token, lent out one operation at a time. Callers beyond the free
 * sessions wait in a bounded FIFO; beyond that they are refused at once. Tokens reuse
 * session handle numbers, so leases carry the pool's generation, bumped on every reset.
 */
export class SessionPool {
  private free: Handle[] = [];
  private generation = 0;
  private readonly waiting: Waiter[] = [];

  constructor(private readonly maxQueue: number) {}

  reset(sessions: Handle[]): void {
    this.generation += 1;
    this.free = [...sessions];
    while (this.waiting.length > 0 && this.free.length > 0) this.waiting.shift()!.resolve({ session: this.free.pop()!, generation: this.generation });
  }

  acquire(): Promise<Lease> {
    const session = this.free.pop();
    if (session) return Promise.resolve({ session, generation: this.generation });
    if (this.waiting.length >= this.maxQueue) {
      return Promise.reject(new BackendUnavailableError(`all PKCS#11 sessions are busy and ${this.waiting.length} requests are waiting`));
    }
    return new Promise((resolve, reject) => this.waiting.push({ resolve, reject }));
  }

  release(lease: Lease): void {
    if (lease.generation !== this.generation) return;
    const next = this.waiting.shift();
    if (next) next.resolve(lease);
    else this.free.push(lease.session);
  }

  /** The backend went down: nobody waits for a session that will not come. */
  clear(err: Error): void {
    this.generation += 1;
    this.free = [];
    for (const waiter of this.waiting.splice(0)) waiter.reject(err);
  }
}
