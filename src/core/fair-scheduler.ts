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

interface Task {
  readonly deadline: number;
  readonly cost: number;
  start(): void;
  expire(): void;
  timer?: NodeJS.Timeout;
}

interface BackendQueue {
  readonly limit: number;
  /** The calls running on the backend (they hold their share until they return). */
  readonly running: Set<{ readonly deadline: number; readonly cost: number }>;
  /** Sum of the running calls' costs. */
  load: number;
  /** Sessions with queued calls, in round-robin order (a Map keeps insertion order). */
  readonly sessions: Map<object, Set<Task>>;
  /** Sum of the queued calls' costs. */
  queuedCost: number;
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
   * Runs `start(remainingMs)` when the backend has a free slot and it is this session's
   * turn. The slot is held until the promise `start` returns settles; `remainingMs` is
   * what is left of `timeoutMs` when it starts. The returned promise rejects with
   * TimeoutError when `timeoutMs` passes first, whether the call was still waiting for a
   * slot (it then never runs) or running (it keeps its slot until it returns: native and
   * HSM calls cannot be cancelled). One timer and one promise per call cover both.
   *
   * Overload is shed at the door: when the calls already waiting on this backend cost
   * `maxQueued` or more, the call is refused at once with OVERLOADED instead of joining a
   * queue that would only grow (and answer everything late, then TIMEOUT). A session that
   * has less than its fair share of the queue waiting (maxQueued divided among the sessions
   * waiting) is still let in, so a flood that fills the queue does not shut a quiet
   * session out; the queue can then exceed maxQueued by at most about as much again.
   */
  run<T>(backend: object, session: object, timeoutMs: number, what: string, start: (remainingMs: number) => Promise<T>, cost = 1): Promise<T> {
    const queue = this.queueFor(backend);
    if (queue.queuedCost > 0) {
      const limit = this.maxQueued();
      if (queue.queuedCost + cost > limit) {
        const own = queue.sessions.get(session);
        const sessions = queue.sessions.size + (own ? 0 : 1);
        if (((own?.size ?? 0) + 1) * cost > limit / sessions) {
          return Promise.reject(new OverloadedError(`${what}: the backend is saturated (${Math.round(queue.queuedCost)} calls' worth waiting for a turn, limit ${limit}); retry later or on another server`));
        }
      }
    }
    return new Promise<T>((resolve, reject) => {
      const deadline = Date.now() + timeoutMs;
      let settled = false;
      const task: Task = {
        deadline,
        cost,
        start: () => {
          const slot = { deadline, cost };
          queue.running.add(slot);
          queue.load += cost;
          let call: Promise<T>;
          try {
            call = start(Math.max(1, deadline - Date.now()));
          } catch (err) {
            call = Promise.reject(err);
          }
          const release = () => {
            queue.running.delete(slot);
            queue.load = queue.running.size === 0 ? 0 : queue.load - cost;
            this.pump(queue);
          };
          call.then(
            (value) => {
              release();
              if (settled) return;
              settled = true;
              clearTimeout(task.timer);
              resolve(value);
            },
            (err: unknown) => {
              release();
              if (settled) return;
              settled = true;
              clearTimeout(task.timer);
              reject(err);
            },
          );
        },
        expire: () => {
          settled = true;
          reject(new TimeoutError(`${what}: no backend slot within ${timeoutMs} ms`));
        },
      };
      task.timer = setTimeout(() => {
        if (settled) return;
        const waiting = queue.sessions.get(session);
        if (waiting?.delete(task)) {
          // Still queued: it never reaches the backend.
          if (waiting.size === 0) queue.sessions.delete(session);
          queue.queuedCost = queue.sessions.size === 0 ? 0 : queue.queuedCost - cost;
          task.expire();
          return;
        }
        settled = true;
        reject(new TimeoutError(`${what} did not finish within ${timeoutMs} ms`));
      }, timeoutMs);
      if (queue.sessions.size === 0 && fits(queue, cost)) return task.start();
      let tasks = queue.sessions.get(session);
      if (!tasks) {
        tasks = new Set();
        queue.sessions.set(session, tasks);
      }
      tasks.add(task);
      queue.queuedCost += cost;
    });
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
    for (const slot of queue.running) if (slot.deadline > now) return undefined;
    return queue.running.size;
  }

  /** Calls waiting for a slot on `backend`. */
  queued(backend: object): number {
    let n = 0;
    for (const tasks of this.queues.get(backend)?.sessions.values() ?? []) n += tasks.size;
    return n;
  }

  private queueFor(backend: object): BackendQueue {
    let queue = this.queues.get(backend);
    if (!queue) {
      queue = { limit: Math.max(1, this.parallelism(backend)), running: new Set(), load: 0, sessions: new Map(), queuedCost: 0 };
      this.queues.set(backend, queue);
    }
    return queue;
  }

  private pump(queue: BackendQueue): void {
    while (queue.sessions.size > 0) {
      const [session, tasks] = queue.sessions.entries().next().value as [object, Set<Task>];
      const task = tasks.values().next().value as Task;
      // Strict turns: the session whose turn it is waits for room rather than be overtaken.
      if (!fits(queue, task.cost)) return;
      tasks.delete(task);
      // This session had its turn: to the back of the line, if it has more.
      queue.sessions.delete(session);
      if (tasks.size > 0) queue.sessions.set(session, tasks);
      queue.queuedCost = queue.sessions.size === 0 ? 0 : queue.queuedCost - task.cost; // no float drift left behind
      if (Date.now() >= task.deadline) {
        clearTimeout(task.timer);
        task.expire();
      } else task.start(); // its timer now bounds the running call
    }
  }
}

/** Room for a call of `cost` (an idle backend always takes one, whatever it costs). */
function fits(queue: BackendQueue, cost: number): boolean {
  return queue.running.size === 0 || queue.load + cost <= queue.limit + 1e-9;
}
