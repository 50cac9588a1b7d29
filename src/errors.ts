/**
 * One error hierarchy for the whole project, in the manner of undici: every error keylessd,
 * keylessctl, the client and the backends throw on purpose is a KeylessdError with its own
 * `name`, a stable `code` and, when it wraps another error, that error as `cause`.
 * Messages are for humans and never carry key material, PINs or passphrases.
 *
 *   KeylessdError                       root (abstract)
 *   ├── KeylessError                    answers a request: `code` is an ErrorCode below, which
 *   │   ├── BadRequestError …           each protocol maps to its wire code in one table
 *   │   │                               (keyless.v1: src/protocols/v1/codec.ts V1_ERROR_CODE,
 *   │   │                               compat: src/protocols/compat/request.ts ERROR_BYTE)
 *   │   └── RemoteError, ResponseTimeoutError (src/client/errors.ts)
 *   ├── ConfigError                     configuration and operator-controlled files
 *   └── … the edges' own failures (connection, usage, framing), each in its module
 */
export const ERROR_CODES = [
  'BAD_REQUEST',
  'KEY_NOT_FOUND',
  'FORBIDDEN',
  'UNSUPPORTED',
  'CRYPTO_FAILURE',
  'BACKEND_UNAVAILABLE',
  'OVERLOADED',
  'TIMEOUT',
  'INTERNAL',
] as const;
/** The codes a request can fail with; what metrics and the audit log record. */
export type ErrorCode = (typeof ERROR_CODES)[number];

export interface KeylessdErrorOptions {
  /** The error this one wraps, kept for logs and debuggers; never sent to a client. */
  readonly cause?: unknown;
}

/** The root of every error the project throws. */
export abstract class KeylessdError extends Error {
  abstract readonly code: string;

  /** `traced: false` skips capturing the call stack (`stack` is then the name and message alone). */
  constructor(message: string, options?: KeylessdErrorOptions, traced = true) {
    const limit = Error.stackTraceLimit;
    if (!traced) Error.stackTraceLimit = 0;
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    Error.stackTraceLimit = limit;
    // Each subclass names itself; the class name is the stable public name.
    this.name = new.target.name;
  }
}

/**
 * Codes that refuse a request (the client's mistake, its rights, the server's load) rather
 * than report a fault. Their errors carry no stack: nothing reads it (they are answered,
 * counted and summarised by message), and capturing one was a fifth of the daemon's CPU
 * while it refused a flood with OVERLOADED (docs/benchmarks.md, Overload).
 */
const REFUSAL_CODES: ReadonlySet<ErrorCode> = new Set(['BAD_REQUEST', 'KEY_NOT_FOUND', 'FORBIDDEN', 'UNSUPPORTED', 'OVERLOADED', 'TIMEOUT']);

/** A failure that answers a request: its `code` goes on the wire through each protocol's table. */
export class KeylessError extends KeylessdError {
  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: KeylessdErrorOptions,
  ) {
    super(message, options, !REFUSAL_CODES.has(code));
  }
}

/** The base of a request error with a fixed code: `class X extends withCode('CODE') {}`. */
function withCode(code: ErrorCode) {
  return class extends KeylessError {
    constructor(message: string, options?: KeylessdErrorOptions) {
      super(code, message, options);
    }
  };
}

export class BadRequestError extends withCode('BAD_REQUEST') {}
export class KeyNotFoundError extends withCode('KEY_NOT_FOUND') {}
export class ForbiddenError extends KeylessError {
  /** `message` goes to the client; `reason` (which groups, which rule) only to the server's logs. */
  constructor(
    message: string,
    readonly reason?: string,
  ) {
    super('FORBIDDEN', message);
  }
}
export class UnsupportedError extends withCode('UNSUPPORTED') {}
export class CryptoFailureError extends withCode('CRYPTO_FAILURE') {}
export class BackendUnavailableError extends withCode('BACKEND_UNAVAILABLE') {}
export class OverloadedError extends withCode('OVERLOADED') {}
/** Server side: an operation (a backend call, a wait for a session) ran past its deadline. */
export class TimeoutError extends withCode('TIMEOUT') {}
export class InternalError extends KeylessError {
  constructor(message = 'internal error', options?: KeylessdErrorOptions) {
    super('INTERNAL', message, options);
  }
}

/**
 * A problem with configuration or an input file an operator controls: raised at start,
 * on reload and by --check-config. `field` names the config path (`listen.port`) or file.
 */
export class ConfigError extends KeylessdError {
  readonly code = 'CONFIG_INVALID';

  constructor(
    readonly field: string,
    readonly problem: string,
    options?: KeylessdErrorOptions,
  ) {
    super(`${field}: ${problem}`, options);
  }
}

/** A public key or signature encoding keylessd cannot read or does not serve (message says which). */
export class KeyFormatError extends KeylessdError {
  readonly code = 'KEY_FORMAT';
}

/**
 * A part of the keylessd installation is missing or cannot be loaded (the package folder, a
 * native addon that `npm ci` builds): a deployment problem, not a request's or a config's.
 */
export class InstallationError extends KeylessdError {
  readonly code = 'INSTALLATION';
}

/** A caller handed an API something it cannot take (a programming error, not a client's request). */
export class InvalidArgumentError extends KeylessdError {
  readonly code = 'INVALID_ARGUMENT';
}

/** Whatever was thrown, the protocol error to answer with; unknown throwables are INTERNAL. */
export function toKeylessError(err: unknown): KeylessError {
  return err instanceof KeylessError ? err : new InternalError();
}
