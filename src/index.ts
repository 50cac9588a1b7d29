/** The package's public API: the edge-side client and the shared protocol vocabulary. */
export { KeylessSession, type SessionOptions } from './client/session';
export { KeylessPool, type PoolOptions } from './client/pool';
export { RemoteError, ConnectionError, PoolBusyError } from './client/errors';
export { KeylessError, ERROR_CODES, type ErrorCode } from './errors';
export { SIGNATURE_ALGORITHMS, type SignatureAlgorithm, type DecryptPadding } from './core/crypto/algorithms';
export type { KeyRef } from './core/keys/registry';
