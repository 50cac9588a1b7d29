import { hash } from 'node:crypto';

/** `prev` of the very first record of a log. */
export const GENESIS = '0'.repeat(64);

/**
 * The chain link: SHA-256 of a record's line exactly as written, without its newline.
 * One-shot crypto.hash: a third of createHash().update().digest()'s cost, and it runs once per record.
 */
export function lineHash(line: string): string {
  return hash('sha256', line, 'hex');
}
