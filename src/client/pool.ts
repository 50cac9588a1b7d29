import type { DecryptPadding, SignatureAlgorithm } from '../core/crypto/algorithms';
import { InvalidArgumentError, KeylessError } from '../errors';
import type { keyless } from '../gen/keyless';
import type { KeyRef } from '../core/keys/registry';
import { errorCodeName, type ResponseMessage } from '../protocols/v1/codec';
import { ConnectionError, PoolBusyError, RemoteError } from './errors';
import { KeylessSession, type SessionOptions } from './session';

export interface PoolOptions {
  /** `wss://host:port/v1` of each server, with the name its certificate carries if not the host. */
  readonly servers: ReadonlyArray<{ readonly url: string; readonly servername?: string }>;
  readonly ca: Buffer;
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly sessionsPerServer?: number;
  readonly requestTimeoutMs?: number;
  /** Requests outstanding across the pool; beyond it calls fail at once with PoolBusyError. */
  readonly maxPending?: number;
  readonly initialBackoffMs?: number;
  readonly maxBackoffMs?: number;
  /** Consecutive failed connects after which a server is set aside for `setAsideMs`. */
  readonly failuresBeforeSetAside?: number;
  readonly setAsideMs?: number;
  /** Idle sessions are pinged this often; one that does not answer is replaced. */
  readonly healthPingMs?: number;
}

interface Server {
  readonly url: string;
  readonly servername?: string;
  readonly slots: Array<KeylessSession | undefined>;
  failures: number;
  setAsideUntil: number;
  tlsSession?: Buffer;
}

/** Errors worth one more try elsewhere: signing is idempotent, so a retry is safe. */
function retryable(err: unknown): boolean {
  return err instanceof ConnectionError || (err instanceof KeylessError && (err.code === 'BACKEND_UNAVAILABLE' || err.code === 'OVERLOADED'));
}

/**
 * Sessions to one or more keylessd servers, for an edge. Requests go to the open session
 * with the fewest in flight; a request that fails with BACKEND_UNAVAILABLE, OVERLOADED or
 * a lost connection is retried once on another session, preferably on another server.
 * Lost sessions reconnect by themselves with exponential backoff and full jitter, reusing
 * the server's TLS session ticket; a server that keeps failing is set aside for a while.
 */
export class KeylessPool {
  private readonly servers: Server[];
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly healthTimer: NodeJS.Timeout;
  private pending = 0;
  private closed = false;

  constructor(private readonly options: PoolOptions) {
    if (options.servers.length === 0) throw new InvalidArgumentError('KeylessPool needs at least one server');
    this.servers = options.servers.map((s) => ({ url: s.url, servername: s.servername, slots: Array(options.sessionsPerServer ?? 2).fill(undefined), failures: 0, setAsideUntil: 0 }));
    for (const server of this.servers) server.slots.forEach((_, i) => void this.connect(server, i));
    this.healthTimer = setInterval(() => this.checkHealth(), options.healthPingMs ?? 15_000).unref();
  }

  /** Resolves once at least one session is open (or rejects after `timeoutMs`). */
  async ready(timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.openSessions().length === 0) {
      if (Date.now() > deadline) throw new ConnectionError(`no keylessd server reachable within ${timeoutMs} ms (${this.servers.map((s) => s.url).join(', ')})`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /**
   * For operators and tests: per server, open sessions, how many of them resumed an earlier
   * TLS session (a reconnect that reused the server's ticket), and whether it is set aside.
   */
  status(): Array<{ url: string; open: number; resumed: number; setAside: boolean }> {
    return this.servers.map((s) => {
      const open = s.slots.filter((x): x is KeylessSession => !!x?.isOpen);
      return { url: s.url, open: open.length, resumed: open.filter((x) => x.resumed).length, setAside: s.setAsideUntil > Date.now() };
    });
  }

  sign(key: KeyRef, algorithm: SignatureAlgorithm, input: { digest: Buffer } | { message: Buffer }): Promise<Buffer> {
    return this.call((session) => session.sign(key, algorithm, input));
  }

  decrypt(key: KeyRef, padding: DecryptPadding, ciphertext: Buffer): Promise<Buffer> {
    return this.call((session) => session.decrypt(key, padding, ciphertext));
  }

  /**
   * KeylessSession.forward on the least-loaded session: an encoded operation in, the Response
   * decoded and as bytes out. Failover is the same as sign's: a lost session, or an Error
   * response BACKEND_UNAVAILABLE or OVERLOADED, is retried once elsewhere (then thrown).
   */
  forward(operation: Uint8Array): Promise<{ response: ResponseMessage; bytes: Buffer }> {
    return this.call(async (session) => {
      const answer = await session.forward(operation);
      const code = answer.response.result === 'error' ? errorCodeName(answer.response.error?.code) : undefined;
      if (code === 'BACKEND_UNAVAILABLE' || code === 'OVERLOADED') throw new RemoteError(code, answer.response.error?.message ?? '');
      return answer;
    });
  }

  ping(payload?: Buffer): Promise<Buffer> {
    return this.call((session) => session.ping(payload));
  }

  listKeys(): Promise<keyless.v1.KeyInfo.$Properties[]> {
    return this.call((session) => session.listKeys());
  }

  getKey(key: KeyRef): Promise<keyless.v1.KeyInfo.$Properties> {
    return this.call((session) => session.getKey(key));
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.healthTimer);
    for (const timer of this.timers) clearTimeout(timer);
    await Promise.all(this.servers.flatMap((s) => s.slots.map((session) => session?.close())));
  }

  private async call<T>(work: (session: KeylessSession) => Promise<T>): Promise<T> {
    if (this.closed) throw new ConnectionError('the pool is closed');
    if (this.pending >= (this.options.maxPending ?? 10_000)) throw new PoolBusyError(`${this.pending} requests are already pending (maxPending ${this.options.maxPending ?? 10_000})`);
    this.pending += 1;
    try {
      const first = this.pick();
      try {
        return await work(first.session);
      } catch (err) {
        if (!retryable(err)) throw err;
        return await work(this.pick(first.server).session);
      }
    } finally {
      this.pending -= 1;
    }
  }

  private openSessions(): Array<{ server: Server; session: KeylessSession }> {
    const now = Date.now();
    return this.servers.flatMap((server) => (server.setAsideUntil > now ? [] : server.slots.filter((s): s is KeylessSession => !!s?.isOpen).map((session) => ({ server, session }))));
  }

  /** The least-loaded open session, on another server than `avoid` when there is one. */
  private pick(avoid?: Server): { server: Server; session: KeylessSession } {
    const open = this.openSessions();
    const candidates = open.filter((c) => c.server !== avoid);
    const pool = candidates.length > 0 ? candidates : open;
    if (pool.length === 0) throw new ConnectionError(`no open session to any keylessd server (${this.servers.map((s) => s.url).join(', ')})`);
    return pool.reduce((best, c) => (c.session.inflight < best.session.inflight ? c : best));
  }

  private async connect(server: Server, slot: number): Promise<void> {
    if (this.closed) return;
    const options: SessionOptions = {
      url: server.url,
      ca: this.options.ca,
      cert: this.options.cert,
      key: this.options.key,
      servername: server.servername,
      requestTimeoutMs: this.options.requestTimeoutMs ?? 5000,
      tlsSession: server.tlsSession,
      onTlsSession: (ticket) => (server.tlsSession = ticket),
    };
    try {
      const session = await KeylessSession.connect(options);
      if (this.closed) return void session.close();
      server.failures = 0;
      server.slots[slot] = session;
      const replace = () => {
        if (server.slots[slot] !== session) return;
        server.slots[slot] = undefined;
        this.later(() => this.connect(server, slot), this.backoff(0));
      };
      session.once('close', replace);
      // A server that is shutting down closes new sessions at once, possibly before this listener existed.
      if (!session.isOpen) replace();
    } catch {
      server.failures += 1;
      if (server.failures >= (this.options.failuresBeforeSetAside ?? 3)) server.setAsideUntil = Date.now() + (this.options.setAsideMs ?? 30_000);
      const wait = Math.max(this.backoff(server.failures), server.setAsideUntil - Date.now());
      this.later(() => this.connect(server, slot), wait);
    }
  }

  /** Exponential backoff with full jitter. */
  private backoff(failures: number): number {
    const cap = Math.min(this.options.maxBackoffMs ?? 10_000, (this.options.initialBackoffMs ?? 100) * 2 ** failures);
    return Math.random() * cap;
  }

  private later(run: () => void, ms: number): void {
    if (this.closed) return;
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      run();
    }, ms);
    this.timers.add(timer);
  }

  private checkHealth(): void {
    for (const server of this.servers) {
      for (const session of server.slots) {
        if (!session?.isOpen || session.inflight > 0) continue;
        session.ping().catch(() => session.abort());
      }
    }
  }
}
