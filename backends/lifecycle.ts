/**
 * Where a backend is in its life:
 * - starting: constructed, open() not yet done;
 * - ready: serving (the only state in which healthy() is true);
 * - degraded: a fault took it down; a recovery attempt is scheduled with backoff;
 * - recovering: a recovery attempt is running;
 * - closed: close() was called; nothing is scheduled any more.
 */
export type LifecycleState = 'starting' | 'ready' | 'degraded' | 'recovering' | 'closed';

/** What a backend does at each turn of its lifecycle. */
export interface LifecycleHooks {
  /** One attempt to bring the backend back; throws while it cannot. */
  recover(): Promise<void>;
  /** The backend went down for `reason`; the first attempt comes in `retryMs`. */
  down(reason: string, retryMs: number): void;
  /** An attempt failed; the next comes in `retryMs`. */
  stillDown(err: unknown, retryMs: number): void;
  /** An attempt succeeded: serving again. */
  recovered(): void;
}

/** The hooks of a backend with nothing to lose (keys in memory): it never calls fail(). */
export const NEVER_DOWN: LifecycleHooks = {
  recover: () => Promise.resolve(),
  down: () => undefined,
  stillDown: () => undefined,
  recovered: () => undefined,
};

export interface LifecycleOptions {
  readonly firstBackoffMs?: number;
  readonly maxBackoffMs?: number;
  /**
   * Without it, every recovery (and every open) starts the backoff again from the first
   * step. With it, the backoff starts again only when the backend had served this long
   * before it went down: a child process that dies as soon as it serves keeps backing off.
   */
  readonly stableMs?: number;
}

const FIRST_BACKOFF_MS = 100;
const MAX_BACKOFF_MS = 30_000;

/**
 * The one state machine of every backend: starting → ready ⇄ degraded ⇄ recovering, and
 * closed from anywhere. A fault (fail()) takes a ready backend down and schedules its
 * recovery with exponential backoff; attempts repeat until one succeeds or the backend is
 * closed. It also counts the backend's calls in flight, so that whatever must not run under
 * them (closing a session, C_Finalize) waits for idle() instead of polling.
 */
export class BackendLifecycle {
  private current: LifecycleState = 'starting';
  private readonly firstBackoffMs: number;
  private readonly maxBackoffMs: number;
  private backoffMs: number;
  private readySince = 0;
  private retry?: NodeJS.Timeout;
  private calls = 0;
  private idleWaiters: Array<() => void> = [];

  constructor(
    private readonly hooks: LifecycleHooks,
    private readonly options: LifecycleOptions = {},
  ) {
    this.firstBackoffMs = options.firstBackoffMs ?? FIRST_BACKOFF_MS;
    this.maxBackoffMs = options.maxBackoffMs ?? MAX_BACKOFF_MS;
    this.backoffMs = this.firstBackoffMs;
  }

  get state(): LifecycleState {
    return this.current;
  }

  /** The answer to Backend.healthy(): serving. */
  get healthy(): boolean {
    return this.current === 'ready';
  }

  get closed(): boolean {
    return this.current === 'closed';
  }

  /**
   * open() begins (again): a closed backend starts anew, and a recovery that was scheduled is
   * called off, since open() connects anyway. A ready backend stays ready: a reload serves on.
   */
  opening(): void {
    clearTimeout(this.retry);
    if (this.current === 'closed') this.current = 'starting';
  }

  /** open() (or the backend's own start) succeeded: serving. */
  opened(): void {
    if (this.current !== 'closed') this.serve();
  }

  /**
   * A fault: a ready backend goes down and its recovery is scheduled. Returns false (and
   * does nothing) when it was not serving: already down, recovering, starting or closed.
   */
  fail(reason: string): boolean {
    if (this.current !== 'ready') return false;
    this.current = 'degraded';
    if (this.options.stableMs !== undefined && Date.now() - this.readySince >= this.options.stableMs) this.backoffMs = this.firstBackoffMs;
    this.hooks.down(reason, this.backoffMs);
    this.schedule();
    return true;
  }

  close(): void {
    this.current = 'closed';
    clearTimeout(this.retry);
  }

  /** Runs `work` as a call in flight: idle() waits for it. */
  async track<T>(work: () => Promise<T>): Promise<T> {
    this.calls++;
    try {
      return await work();
    } finally {
      if (--this.calls === 0) for (const wake of this.idleWaiters.splice(0)) wake();
    }
  }

  /** true while a tracked call runs. */
  get busy(): boolean {
    return this.calls > 0;
  }

  /** Resolves once no tracked call runs. */
  idle(): Promise<void> {
    if (this.calls === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private serve(): void {
    this.current = 'ready';
    this.readySince = Date.now();
    if (this.options.stableMs === undefined) this.backoffMs = this.firstBackoffMs;
  }

  private schedule(): void {
    clearTimeout(this.retry);
    this.retry = setTimeout(() => void this.attempt(), this.backoffMs).unref();
    this.backoffMs = Math.min(this.backoffMs * 2, this.maxBackoffMs);
  }

  private async attempt(): Promise<void> {
    if (this.current !== 'degraded') return;
    this.current = 'recovering';
    try {
      await this.hooks.recover();
    } catch (err) {
      if (this.current !== 'recovering') return; // closed (or opened again) meanwhile
      this.current = 'degraded';
      this.hooks.stillDown(err, this.backoffMs);
      this.schedule();
      return;
    }
    if (this.current !== 'recovering') return;
    this.serve();
    this.hooks.recovered();
  }
}

/** Resolves with `work`, or rejects with `error()` once `ms` have passed first. */
export function withDeadline<T>(work: Promise<T>, ms: number, error: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(error()), ms);
    timer.unref();
  });
  return Promise.race([work, deadline]).finally(() => clearTimeout(timer));
}
