/**
 * Thrown from a condition to stop waiting at once (the process being waited on exited, say);
 * until() passes it on instead of trying again.
 */
export class GiveUp extends Error {}

/** What a condition returns when it holds. */
export type Truthy<T> = Exclude<T, false | 0 | '' | null | undefined>;

/**
 * Waits until `condition` returns a truthy value, polling, and resolves with that value;
 * fails with `what` after `timeoutMs`. The one way tests wait: for a condition with a
 * deadline and a message, never for a fixed time.
 *
 * A condition that throws counts as "not yet" (a server still starting refuses connections);
 * the last such error is named in the timeout's message. Throw GiveUp to stop at once.
 * `what` may be a function, called only on timeout (to add a log as it is then).
 */
export async function until<T>(condition: () => T | Promise<T>, timeoutMs: number, what: string | (() => string)): Promise<Truthy<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await condition();
      if (value) return value as Truthy<T>;
    } catch (err) {
      if (err instanceof GiveUp) throw err;
      last = err;
    }
    if (Date.now() > deadline) {
      const reason = last === undefined ? '' : ` (last error: ${last instanceof Error ? last.message : String(last)})`;
      throw new Error(`timed out after ${timeoutMs} ms: ${typeof what === 'string' ? what : what()}${reason}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
