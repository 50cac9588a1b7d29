/**
 * keylessctl's exit statuses. Scripts branch on them: 1 means the server (or a check) said
 * no, 2 that the command line was wrong, 3 that no answer could be had at all.
 */
import { KeylessdError } from '../../errors';

export const EXIT = {
  ok: 0,
  /** The server refused or failed the operation (an error code), or a check failed (audit verify, bench errors). */
  refused: 1,
  /** Bad command line: unknown command or flag, missing or malformed value, unreadable input file. */
  usage: 2,
  /** No answer: cannot connect, TLS refused, session lost, request timed out locally. */
  connection: 3,
} as const;

/** A failure that is not a usage or connection problem and not a server error code: a check that failed. */
export class CheckFailedError extends KeylessdError {
  readonly code = 'CHECK_FAILED';
  readonly exitCode: number = EXIT.refused;
}

/** The other end answered, but in another protocol or not at all in this one. */
export class WrongProtocolError extends KeylessdError {
  readonly code = 'WRONG_PROTOCOL';
  readonly exitCode: number = EXIT.connection;
}
