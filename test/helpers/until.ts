/**
 * Waits until `condition` holds, polling; fails with `what` after `timeoutMs`. The one way
 * tests wait: for a condition with a deadline and a message, never for a fixed time.
 */
export async function until(condition: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
