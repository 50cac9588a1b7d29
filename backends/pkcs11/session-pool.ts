import type { Handle } from 'pkcs11js';
import { OverloadedError } from '../../src/errors';
import { PendingRequests } from '../pending';

/**
 * Open sessions on one token, lent out one operation at a time. Callers beyond the free
 * sessions wait in a bounded FIFO; beyond that they are refused at once with OVERLOADED
 * (the token is up, only busy: PROTOCOL.md's "in-flight limits reached; retry later").
 *
 * A session is never closed while a call runs on it: closing a session under a thread
 * that is inside C_Sign on it is a use-after-free in SoftHSM. Retired sessions that are
 * lent out are closed when they come back. Sessions are tracked by the identity of their
 * handle Buffer, so a token reusing a handle number cannot confuse an old one with a new one.
 */
export class SessionPool {
  private free: Handle[] = [];
  private readonly lent = new Set<Handle>();
  private readonly retiring = new Set<Handle>();
  /** Requests waiting for a session, oldest first. */
  private readonly waiting = new PendingRequests<Handle>();

  constructor(
    private readonly maxQueue: number,
    private readonly closeSession: (session: Handle) => void,
  ) {}

  /** Puts fresh sessions in service; requests already waiting get them first. */
  fill(sessions: Handle[]): void {
    for (const session of sessions) this.give(session);
  }

  /** A free session at once, or undefined. */
  take(): Handle | undefined {
    const session = this.free.pop();
    if (session) this.lent.add(session);
    return session;
  }

  /** The next session released, in turn; refused at once when the queue is full. */
  wait(): Promise<Handle> {
    if (this.waiting.size >= this.maxQueue) {
      return Promise.reject(new OverloadedError(`all PKCS#11 sessions are busy and ${this.waiting.size} requests are already waiting for one`));
    }
    return this.waiting.add(() => undefined);
  }

  /** Called once the call on `session` has returned. */
  release(session: Handle): void {
    this.lent.delete(session);
    if (this.retiring.delete(session)) this.closeSession(session);
    else this.give(session);
  }

  /** false once `session` has been retired: what fails on it now is old news. */
  isInService(session: Handle): boolean {
    return this.lent.has(session);
  }

  /**
   * Takes every session out of service (a fault, a reload, close): free ones are closed
   * now, lent ones when their call returns. Requests still waiting are refused with
   * `err`, or, without one (a reload), wait on for the sessions the next fill() brings.
   */
  retire(err?: Error): void {
    for (const session of this.free.splice(0)) this.closeSession(session);
    for (const session of this.lent) this.retiring.add(session);
    this.lent.clear();
    if (err) this.waiting.rejectAll(err);
  }

  private give(session: Handle): void {
    if (this.waiting.size > 0) {
      this.lent.add(session);
      this.waiting.resolveOldest(session);
    } else {
      this.free.push(session);
    }
  }
}
