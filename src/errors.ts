/**
 * One error hierarchy for the whole daemon. `code` is stable: it is what keyless.v1
 * puts on the wire (ErrorCode names), what the compat port maps to its error bytes,
 * and what metrics and the audit log record. Messages are for humans and never carry
 * key material, PINs or passphrases.
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
export type ErrorCode = (typeof ERROR_CODES)[number];

export class KeylessError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'KeylessError';
  }
}

export class BadRequestError extends KeylessError {
  constructor(message: string) {
    super('BAD_REQUEST', message);
  }
}
export class KeyNotFoundError extends KeylessError {
  constructor(message: string) {
    super('KEY_NOT_FOUND', message);
  }
}
export class ForbiddenError extends KeylessError {
  /** `message` goes to the client; `reason` (which groups, which rule) only to the server's logs. */
  constructor(
    message: string,
    readonly reason?: string,
  ) {
    super('FORBIDDEN', message);
  }
}
export class UnsupportedError extends KeylessError {
  constructor(message: string) {
    super('UNSUPPORTED', message);
  }
}
export class CryptoFailureError extends KeylessError {
  constructor(message: string) {
    super('CRYPTO_FAILURE', message);
  }
}
export class BackendUnavailableError extends KeylessError {
  constructor(message: string) {
    super('BACKEND_UNAVAILABLE', message);
  }
}
export class OverloadedError extends KeylessError {
  constructor(message: string) {
    super('OVERLOADED', message);
  }
}
export class TimeoutError extends KeylessError {
  constructor(message: string) {
    super('TIMEOUT', message);
  }
}
export class InternalError extends KeylessError {
  constructor(message = 'internal error') {
    super('INTERNAL', message);
  }
}

/**
 * A problem with configuration or an input file an operator controls: raised at start,
 * on reload and by --check-config. `field` names the config path (`listen.port`) or file.
 */
export class ConfigError extends Error {
  constructor(
    readonly field: string,
    readonly problem: string,
  ) {
    super(`${field}: ${problem}`);
    this.name = 'ConfigError';
  }
}

/** Whatever was thrown, the protocol error to answer with; unknown throwables are INTERNAL. */
export function toKeylessError(err: unknown): KeylessError {
  return err instanceof KeylessError ? err : new InternalError();
}
