import { createHash } from 'node:crypto';

/** `prev` of the very first record of a log. */
export const GENESIS = '0'.repeat(64);

/** The chain link: SHA-256 of a record's line exactly as written, without its newline. */
export function lineHash(line: string): string {
  return createHash('sha256').update(line).digest('hex');
}
