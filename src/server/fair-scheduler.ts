import { TimeoutError } from '../errors';

/**
 * Calls the file backend runs at once: its work runs on libuv's thread pool
 * (UV_THREADPOOL_SIZE, 4 by default). More than that would only queue inside the pool,
 * first come first served, where one session's backlog delays everyone. (Fewer, e.g. the
 * number of cores, measured no better for latency and cost throughput: a slot is freed
 * only once a result is back on the main thread.)
 */
export const DEFAULT_PARALLELISM = Math.max(1, Number(process.env.UV_THREADPOOL_SIZE) || 4);

/**
 * A backend's natural parallelism: `parallelism` if it declares one, the session pool of
 * a PKCS#11 backend (`pool_size`: calls beyond it wait for a session anyway), otherwise
 * DEFAULT_PARALLELISM.
 */
export function backendParallelism(backend: object): number {
  const b = backend as { kind?: string; parallelism?: unknown; config?: { pool_size?: unknown } };
  if (typeof b.parallelism === 'number' && b.parallelism >= 1) return b.parallelism;
  if (b.kind === 'pkcs11' && typeof b.config?.pool_size === 'number' && b.config.pool_size >= 1) return b.config.pool_size;
  return DEFAULT_PARALLELISM;
}

interface Task {
  readonly deadline: number;
  start(): void;
  expire(): void;
  timer?: NodeJS.Timeout;
}

interface BackendQueue {
  readonly limit: number;
  /** Deadlines of the calls running on the backend (they hold their slot until they return). */
  readonly running: Set<{ readonly deadline: number }>;
  /** Sessions with queued calls, in round-robin order (a Map keeps insertion order). */
  readonly sessions: Map<object, Set<Task>>;
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

  constructor(private readonly parallelism: (backend: object) => number = backendParallelism) {}

  /**
   * Runs `start(remainingMs)` when the backend has a free slot and it is this session's
   * turn. The slot is held until the promise `start` returns settles; `remainingMs` is
   * what is left of `timeoutMs` when it starts.
   */
  run<T>(backend: object, session: object, timeoutMs: number, what: string, start: (remainingMs: number) => Promise<T>): Promise<T> {
    const queue = this.queueFor(backend);
    return new Promise<T>((resolve, reject) => {
      const deadline = Date.now() + timeoutMs;
      const task: Task = {
        deadline,
        start: () => {
          const slot = { deadline };
          queue.running.add(slot);
          let call: Promise<T>;
          try {
            call = start(Math.max(1, deadline - Date.now()));
          } catch (err) {
            call = Promise.reject(err);
          }
          call.then(resolve, reject).finally(() => {
            queue.running.delete(slot);
            this.pump(queue);
          });
        },
        expire: () => reject(new TimeoutError(`${what}: no backend slot within ${timeoutMs} ms`)),
      };
      if (queue.running.size < queue.limit && queue.sessions.size === 0) return task.start();
      let tasks = queue.sessions.get(session);
      if (!tasks) {
        tasks = new Set();
        queue.sessions.set(session, tasks);
      }
      tasks.add(task);
      task.timer = setTimeout(() => {
        const waiting = queue.sessions.get(session);
        if (!waiting?.delete(task)) return;
        if (waiting.size === 0) queue.sessions.delete(session);
        task.expire();
      }, timeoutMs);
    });
  }

  /**
   * Whether every slot of the backend is held by a call past its deadline: the backend is
   * hung, and a new call would only wait for a slot until its own deadline.
   */
  stalled(backend: object): number | undefined {
    const queue = this.queues.get(backend);
    if (!queue || queue.running.size < queue.limit) return undefined;
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
      queue = { limit: Math.max(1, this.parallelism(backend)), running: new Set(), sessions: new Map() };
      this.queues.set(backend, queue);
    }
    return queue;
  }

  private pump(queue: BackendQueue): void {
    while (queue.running.size < queue.limit && queue.sessions.size > 0) {
      const [session, tasks] = queue.sessions.entries().next().value as [object, Set<Task>];
      const task = tasks.values().next().value as Task;
      tasks.delete(task);
      // This session had its turn: to the back of the line, if it has more.
      queue.sessions.delete(session);
      if (tasks.size > 0) queue.sessions.set(session, tasks);
      clearTimeout(task.timer);
      if (Date.now() >= task.deadline) task.expire();
      else task.start();
    }
  }
}
