import { OverloadedError, TimeoutError } from '../errors';

/**
 * What the file backend runs at once, in RSA-private-operation units: its work runs on
 * at most UV_THREADPOOL_SIZE (4 by default) signing threads of its native queue
 * (backends/file/native.ts), so more RSA operations than threads would only queue inside
 * it, first come first served, where one session's backlog delays everyone.
 */
export const DEFAULT_PARALLELISM = Math.max(1, Number(process.env.UV_THREADPOOL_SIZE) || 4);

/**
 * Cost of one file-backend call in those units. An ECDSA or Ed25519 signature costs a few
 * percent of an RSA private operation; admitting them one per thread would leave threads
 * idle while each result travels back through the main thread (P-256 throughput fell by
 * half when every call cost 1), so they are charged 1/20.
 */
export const CHEAP_CALL_COST = 1 / 20;

/**
 * A backend's natural parallelism: `parallelism` if it declares one; for a PKCS#11 backend
 * twice its session pool (`pool_size`: the sessions run one call each, and one call waiting
 * in the backend's own queue per session keeps a session from idling while the main thread
 * hands it the next); otherwise DEFAULT_PARALLELISM.
 */
export function backendParallelism(backend: object): number {
  const b = backend as { kind?: string; parallelism?: unknown; config?: { pool_size?: unknown } };
  if (typeof b.parallelism === 'number' && b.parallelism >= 1) return b.parallelism;
  if (b.kind === 'pkcs11' && typeof b.config?.pool_size === 'number' && b.config.pool_size >= 1) return 2 * b.config.pool_size;
  return DEFAULT_PARALLELISM;
}

/**
 * Calls that may wait for a turn on one backend, in units of its callCost (an RSA
 * operation on the file backend, one call on an HSM session), unless the limits say
 * otherwise (`limits.max_queued_per_backend`).
 */
export const DEFAULT_MAX_QUEUED = 256;

/** What one call on `backend` with a key of `keyType` costs against backendParallelism(). */
export function callCost(backend: { readonly kind: string }, keyType: string): number {
  if (backend.kind !== 'file') return 1; // HSM sessions and the CNG shim: one call each, whatever the key
  return keyType === 'rsa' ? 1 : CHEAP_CALL_COST;
}

/** What the scheduler runs: the backend call, and how to name it in a TIMEOUT or OVERLOADED message. */
export interface Job<T> {
  /** Starts the backend call; `remainingMs` is what is left of the deadline. */
  start(remainingMs: number): Promise<T>;
  /** Called once the backend call has returned, answered or not (it held its share until then). */
  returned?(): void;
  /** What the call is, for error messages (built only when one is needed). */
  describe(): string;
}

/** One call from admission to its answer. A plain object with no closures: the hot path allocates little. */
class Scheduled<T> {
  answered = false;
  constructor(
    readonly queue: BackendQueue,
    readonly session: object,
    readonly deadline: number,
    readonly timeoutMs: number,
    readonly cost: number,
    readonly job: Job<T>,
    readonly resolve: (value: T) => void,
    readonly reject: (err: unknown) => void,
  ) {}
}

interface BackendQueue {
  readonly limit: number;
  /** The calls running on the backend (they hold their share until they return, answered or not). */
  readonly running: Set<Scheduled<unknown>>;
  /** Sum of the running calls' costs. */
  load: number;
  /** Sessions with queued calls, in round-robin order (a Map keeps insertion order). */
  readonly sessions: Map<object, Set<Scheduled<unknown>>>;
  /** Sum of the queued calls' costs. */
  queuedCost: number;
  /** One timer per backend, set for the earliest deadline, instead of one per call. */
  sweep?: NodeJS.Timeout;
  sweepAt: number;
}

/**
 * Fair use of each backend across sessions: at most `parallelism(backend)` calls run on a
 * backend at once; the rest wait in a queue per session, and a free slot goes to the next
 * session in turn (round-robin), not to the oldest call. So a session that keeps its
 * in-flight limit full delays another session's call by at most about one call per
 * other busy session, not by its whole backlog. A queued call whose deadline passes is
 * answered TIMEOUT and never reaches the backend.
 */
export class FairScheduler {
  private readonly queues = new WeakMap<object, BackendQueue>();

  constructor(
    private readonly parallelism: (backend: object) => number = backendParallelism,
    /** How much (in callCost units) may wait for a turn on one backend; read at each call, so a reload's limit applies at once. */
    private readonly maxQueued: () => number = () => DEFAULT_MAX_QUEUED,
  ) {}

  /**
   * Runs `job.start(remainingMs)` when the backend has a free slot and it is this session's
   * turn. The slot is held until the promise `start` returns settles; `remainingMs` is
   * what is left of `timeoutMs` when it starts. The returned promise rejects with
   * TimeoutError when `timeoutMs` passes first, whether the call was still waiting for a
   * slot (it then never runs) or running (it keeps its slot until it returns: native and
   * HSM calls cannot be cancelled).
   *
   * Overload is shed at the door: when the calls already waiting on this backend cost
   * `maxQueued` or more, the call is refused at once with OVERLOADED instead of joining a
   * queue that would only grow (and answer everything late, then TIMEOUT). A session that
   * has less than its fair share of the queue waiting (maxQueued divided among the sessions
   * waiting) is still let in, so a flood that fills the queue does not shut a quiet
   * session out; the queue can then exceed maxQueued by at most about as much again.
   */
  run<T>(backend: object, session: object, timeoutMs: number, job: Job<T>, cost = 1): Promise<T> {
    const queue = this.queueFor(backend);
    if (queue.queuedCost > 0) {
      const limit = this.maxQueued();
      if (queue.queuedCost + cost > limit) {
        const own = queue.sessions.get(session);
        const sessions = queue.sessions.size + (own ? 0 : 1);
        if (((own?.size ?? 0) + 1) * cost > limit / sessions) {
          return Promise.reject(new OverloadedError(`${job.describe()}: the backend is saturated (${Math.round(queue.queuedCost)} calls' worth waiting for a turn, limit ${limit}); retry later or on another server`));
        }
      }
    }
    const deadline = Date.now() + timeoutMs;
    let call!: Scheduled<T>;
    const answer = new Promise<T>((resolve, reject) => {
      call = new Scheduled(queue, session, deadline, timeoutMs, cost, job, resolve, reject);
    });
    const entry = call as Scheduled<unknown>;
    this.sweepBy(queue, deadline);
    if (queue.sessions.size === 0 && fits(queue, cost)) {
      this.start(entry);
    } else {
      let calls = queue.sessions.get(session);
      if (!calls) {
        calls = new Set();
        queue.sessions.set(session, calls);
      }
      calls.add(entry);
      queue.queuedCost += cost;
    }
    return answer;
  }

  /**
   * Whether a call of `cost` finds the backend full of calls that are all past their
   * deadline: the backend is hung, and the call would only wait until its own deadline.
   * Returns how many calls are stuck, or undefined.
   */
  stalled(backend: object, cost = 1): number | undefined {
    const queue = this.queues.get(backend);
    if (!queue || fits(queue, cost)) return undefined;
    const now = Date.now();
    for (const call of queue.running) if (call.deadline > now) return undefined;
    return queue.running.size;
  }

  /** Calls on `backend` that have started and not returned (answered TIMEOUT or not). */
  running(backend: object): number {
    return this.queues.get(backend)?.running.size ?? 0;
  }

  /** Calls waiting for a slot on `backend`. */
  queued(backend: object): number {
    let n = 0;
    for (const calls of this.queues.get(backend)?.sessions.values() ?? []) n += calls.size;
    return n;
  }

  private queueFor(backend: object): BackendQueue {
    let queue = this.queues.get(backend);
    if (!queue) {
      queue = { limit: Math.max(1, this.parallelism(backend)), running: new Set(), load: 0, sessions: new Map(), queuedCost: 0, sweepAt: Infinity };
      this.queues.set(backend, queue);
    }
    return queue;
  }

  private start(call: Scheduled<unknown>): void {
    const { queue } = call;
    queue.running.add(call);
    queue.load += call.cost;
    let returned: Promise<unknown>;
    try {
      returned = call.job.start(Math.max(1, call.deadline - Date.now()));
    } catch (err) {
      returned = Promise.reject(err);
    }
    returned.then(
      (value) => this.returned(call, true, value),
      (err: unknown) => this.returned(call, false, err),
    );
  }

  /** The backend call returned: its slot goes to the next session in turn, then the caller gets the answer (unless its deadline came first). */
  private returned(call: Scheduled<unknown>, ok: boolean, outcome: unknown): void {
    const { queue } = call;
    queue.running.delete(call);
    queue.load = queue.running.size === 0 ? 0 : queue.load - call.cost; // no float drift left behind
    call.job.returned?.();
    this.pump(queue);
    if (call.answered) return;
    call.answered = true;
    if (ok) call.resolve(outcome);
    else call.reject(outcome);
  }

  private pump(queue: BackendQueue): void {
    while (queue.sessions.size > 0) {
      const calls = queue.sessions.values().next().value as Set<Scheduled<unknown>>;
      const call = calls.values().next().value as Scheduled<unknown>;
      // Strict turns: the session whose turn it is waits for room rather than be overtaken.
      if (!fits(queue, call.cost)) return;
      this.dequeue(call, true);
      if (Date.now() >= call.deadline) this.expire(call);
      else this.start(call);
    }
  }

  /**
   * Takes a queued call out of its session's queue. `tookTurn`: the session had its turn and
   * goes to the back of the line if it has more; a call that merely expired leaves its
   * session where it was.
   */
  private dequeue(call: Scheduled<unknown>, tookTurn: boolean): void {
    const { queue, session } = call;
    const calls = queue.sessions.get(session)!;
    calls.delete(call);
    if (calls.size === 0) queue.sessions.delete(session);
    else if (tookTurn) {
      queue.sessions.delete(session);
      queue.sessions.set(session, calls);
    }
    queue.queuedCost = queue.sessions.size === 0 ? 0 : queue.queuedCost - call.cost; // no float drift left behind
  }

  /** Answers TIMEOUT; a call still queued never reaches the backend, a running one keeps its slot until it returns. */
  private expire(call: Scheduled<unknown>): void {
    call.answered = true;
    const queued = !call.queue.running.has(call);
    call.reject(new TimeoutError(queued ? `${call.job.describe()}: no backend slot within ${call.timeoutMs} ms` : `${call.job.describe()} did not finish within ${call.timeoutMs} ms`));
  }

  /** Makes sure the sweep runs by `deadline`. Deadlines mostly arrive in order, so the timer is rarely set again. */
  private sweepBy(queue: BackendQueue, deadline: number): void {
    if (queue.sweep && queue.sweepAt <= deadline) return;
    clearTimeout(queue.sweep);
    queue.sweepAt = deadline;
    // Unreferenced: a deadline alone keeps no process alive (the calls' own I/O does).
    queue.sweep = setTimeout(() => this.sweep(queue), Math.max(1, deadline - Date.now())).unref();
  }

  /** Answers TIMEOUT to every call past its deadline, queued or running, and sets the timer for the next one. */
  private sweep(queue: BackendQueue): void {
    queue.sweep = undefined;
    const now = Date.now();
    let next = Infinity;
    for (const calls of queue.sessions.values()) {
      for (const call of calls) {
        if (call.deadline > now) next = Math.min(next, call.deadline);
        else {
          this.dequeue(call, false);
          this.expire(call);
        }
      }
    }
    for (const call of queue.running) {
      if (call.answered) continue;
      if (call.deadline > now) next = Math.min(next, call.deadline);
      else this.expire(call);
    }
    if (next !== Infinity) this.sweepBy(queue, next);
  }
}

/** Room for a call of `cost` (an idle backend always takes one, whatever it costs). */
function fits(queue: BackendQueue, cost: number): boolean {
  return queue.running.size === 0 || queue.load + cost <= queue.limit + 1e-9;
}
