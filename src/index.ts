/** The package's public API: the edge-side client and the shared protocol vocabulary. */
export { KeylessSession, type SessionOptions } from './client/session';
export { RemoteError, ConnectionError } from './client/errors';
export { KeylessError, ERROR_CODES, type ErrorCode } from './errors';
export { SIGNATURE_ALGORITHMS, type SignatureAlgorithm, type DecryptPadding } from './crypto/algorithms';
export type { KeyRef } from './keys/registry';
