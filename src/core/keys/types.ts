import type { DecryptPadding, SignScheme } from '../crypto/algorithms';
import type { PublicKeyInfo } from '../crypto/keyid';

/**
 * A private key held by a backend. Its private half never leaves the backend: the only
 * ways to use it are sign() and decrypt(), both asynchronous and off the event loop.
 *
 * Errors are KeylessErrors (src/errors.ts): UnsupportedError when the key or its token
 * cannot do the scheme, CryptoFailureError when it tried and failed,
 * BackendUnavailableError when the backend is down. Deadlines are the dispatcher's job.
 */
export interface KeyHandle {
  /** Configured name, else derived by the backend (file name without extension, object label). */
  readonly name: string;
  readonly backend: Backend;
  readonly publicKey: PublicKeyInfo;
  /**
   * `input` is a digest of the scheme's hash length (already checked by the caller) or,
   * for ed25519, the message. ECDSA signatures are returned DER-encoded.
   */
  sign(scheme: SignScheme, input: Buffer): Promise<Buffer>;
  /** rsa-raw returns the full modulus-length block. */
  decrypt(padding: DecryptPadding, ciphertext: Buffer): Promise<Buffer>;
}

export type BackendKind = 'file' | 'pkcs11' | 'cng';

export interface Backend {
  readonly kind: BackendKind;
  /** Configured instance name; used as a metrics label and in KeyInfo.backend. */
  readonly name: string;
  /**
   * Deadline the dispatcher gives each operation on this backend's keys; past it the
   * request answers TIMEOUT while the backend call runs on (it cannot be cancelled).
   */
  readonly timeoutMs: number;
  /**
   * Loads (or reloads) the keys. Keys it cannot use are reported through `skipped`, each
   * with the file/object and the reason; a backend that cannot start at all throws a
   * ConfigError naming the problem.
   */
  open(): Promise<{ keys: KeyHandle[]; skipped: SkippedKey[] }>;
  /** false while the backend is down or reconnecting (readiness, `keyless_backend_up`). */
  healthy(): boolean;
  close(): Promise<void>;
}

export interface SkippedKey {
  /** What was skipped: a file path, an object label, a key name. Never key material. */
  readonly source: string;
  /** Why, readable after "<source>: ". Never key material or a secret. */
  readonly reason: string;
}
