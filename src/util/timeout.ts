import { TimeoutError } from '../errors';

/**
 * Settles with `work`, or rejects with TimeoutError after `ms`. The work itself is not
 * cancelled (native and HSM calls cannot be); callers bound how much of it may pile up.
 */
export function withTimeout<T>(work: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(`${what} did not finish within ${ms} ms`)), ms);
  });
  return Promise.race([work, deadline]).finally(() => clearTimeout(timer));
}
