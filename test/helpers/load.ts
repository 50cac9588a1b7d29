import { setImmediate as nextTurn } from 'node:timers/promises';
import { RemoteError } from '../../src/client/errors';
import { GiveUp } from './until';

export interface Load {
  /** Throws GiveUp, naming the error, once a loop has ended on one: for until() conditions. */
  assertRunning(): void;
  /** Ends every loop after the request it has in flight; rejects with the error a loop ended on. */
  stop(): Promise<void>;
}

/**
 * `loops` loops, each sending one request after another until stopped: the load of the tests
 * that break something underneath a busy daemon. `request` records the outcomes the test
 * expects; an error it lets through ends its loop (a closed session, say: every later request
 * would fail the same way).
 *
 * Each loop also gives the event loop a turn between requests. A request that fails at once (a
 * client whose session is closed rejects without any I/O) would otherwise make the loops spin
 * on microtasks alone: no timer fires, so neither until()'s deadline nor jest's timeout ends
 * anything, and the outcomes grow until V8 aborts the worker. CI, 2026-12-03: the session of
 * token-removal.test.ts closed under its running loops (as afterAll does after any failed
 * expectation) and 52 minutes later V8 gave up ("invalid size error"), the cause never printed.
 */
export function keepBusy(loops: number, request: (loop: number) => Promise<unknown>): Load {
  let stopping = false;
  let failure: { error: unknown } | undefined;
  const running = Array.from({ length: loops }, async (_, loop) => {
    try {
      while (!stopping && !failure) {
        await request(loop);
        await nextTurn();
      }
    } catch (error) {
      failure ??= { error };
    }
  });
  const described = () => {
    const { error } = failure!;
    return `a load loop ended on ${error instanceof Error ? `${error.name}: ${error.message}` : String(error)}`;
  };
  return {
    assertRunning: () => {
      if (failure) throw new GiveUp(described());
    },
    stop: async () => {
      stopping = true;
      await Promise.all(running);
      if (failure) throw new Error(described());
    },
  };
}

/** What answerOf records for an answer that `isRight` refused (a signature that does not verify). */
const WRONG_ANSWER = 'wrong answer';

/**
 * 'ok', or WRONG_ANSWER, or the protocol code of the error the server answered with. Anything
 * else (the session lost, no answer in time) is thrown on: it ends a keepBusy loop and so fails
 * the test.
 */
export const answerOf = <T>(work: Promise<T>, isRight: (answer: T) => boolean = () => true): Promise<string> =>
  work.then(
    (answer) => (isRight(answer) ? 'ok' : WRONG_ANSWER),
    (err: unknown) => {
      if (err instanceof RemoteError) return err.code;
      throw err;
    },
  );
