import { BadRequestError, CryptoFailureError, InternalError, type KeylessError, UnsupportedError } from '../../src/errors';
import { CngStatus } from './codec';

/**
 * The KeylessError for a failed shim answer to an operation on a key that was opened
 * before. KEY_NOT_FOUND here means the key vanished from the provider after keylessd
 * loaded it: the client asked for a key keylessd serves, so it is a CRYPTO_FAILURE, not
 * KEY_NOT_FOUND (that would tell the edge it sent the wrong key id). At open the same
 * status skips the key instead (backend.ts).
 */
export function operationError(status: number, code: number, message: string, what: string): KeylessError {
  const detail = describeFailure(code, message);
  switch (status) {
    case CngStatus.badInput:
      return new BadRequestError(`${what}: ${detail}`);
    case CngStatus.unsupported:
      return new UnsupportedError(`${what}: the provider does not support it: ${detail}`);
    case CngStatus.keyNotFound:
      return new CryptoFailureError(`${what}: the key is no longer in its provider: ${detail}`);
    case CngStatus.cryptoFailure:
      return new CryptoFailureError(`${what} failed: ${detail}`);
    case CngStatus.badOperation:
      return new UnsupportedError(`${what}: the CNG shim does not know this operation (is keyless-cng-shim.exe older than keylessd?)`);
    case CngStatus.badFrame:
      return new InternalError(`${what}: the CNG shim could not parse the request: ${detail}`);
    default:
      return new InternalError(`${what}: the CNG shim answered with unknown status ${status}`);
  }
}

/** For logs and skipped-key reasons: the failure in words, with the CNG code when there is one. */
export function describeFailure(code: number, message: string): string {
  return code ? `${message} (0x${code.toString(16).padStart(8, '0')})` : message;
}
