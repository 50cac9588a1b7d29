import type { KeyObject } from 'node:crypto';
import { createPublicKey } from 'node:crypto';
import { describeScheme, keyTypeOf, type DecryptPadding, type SignScheme } from '../../src/core/crypto/algorithms';
import { describePublicKey, type PublicKeyInfo } from '../../src/core/crypto/keyid';
import { CryptoFailureError, UnsupportedError } from '../../src/errors';
import type { Backend, KeyHandle } from '../../src/core/keys/types';
import { nativeAddon, nativeQueue, NativeHash, NativeOp, type NativeKey, type NativeQueue } from './native';

const HASH_NUMBER = {
  'md5-sha1': NativeHash.none,
  sha1: NativeHash.sha1,
  sha224: NativeHash.sha224,
  sha256: NativeHash.sha256,
  sha384: NativeHash.sha384,
  sha512: NativeHash.sha512,
} as const;

const SIGN_OP = { 'rsa-pkcs1': NativeOp.rsaPkcs1, 'rsa-pss': NativeOp.rsaPss, ecdsa: NativeOp.ecdsa, ed25519: NativeOp.ed25519 } as const;

/** A key held in memory by the OpenSSL addon; operations run on the addon's worker threads (NativeQueue). */
export class FileKey implements KeyHandle {
  readonly publicKey: PublicKeyInfo;
  private readonly native: NativeKey;
  private readonly queue: NativeQueue;
  private readonly signatureFailed: (message: string) => Error;
  private readonly decryptionFailed: (message: string) => Error;

  constructor(
    readonly name: string,
    readonly backend: Backend,
    privateKey: KeyObject,
  ) {
    this.publicKey = describePublicKey(createPublicKey(privateKey).export({ format: 'der', type: 'spki' }));
    this.native = nativeAddon().loadKey(privateKey.export({ format: 'der', type: 'pkcs8' }));
    this.queue = nativeQueue();
    // Made once per key, not per request: the hot path allocates no closure for its failure.
    this.signatureFailed = (message) => new CryptoFailureError(`signature with key ${this.name} failed: ${message}`);
    this.decryptionFailed = (message) => new CryptoFailureError(`decryption with key ${this.name} failed: ${message}`);
  }

  sign(scheme: SignScheme, input: Buffer): Promise<Buffer> {
    if (keyTypeOf(scheme) !== this.publicKey.type) {
      return Promise.reject(new UnsupportedError(`key ${this.name} is ${this.publicKey.type}; it cannot sign ${describeScheme(scheme)}`));
    }
    const hash = scheme.kind === 'ed25519' ? NativeHash.none : HASH_NUMBER[scheme.hash];
    return this.queue.run(this.native, SIGN_OP[scheme.kind], hash, input, this.signatureFailed);
  }

  decrypt(padding: DecryptPadding, ciphertext: Buffer): Promise<Buffer> {
    if (this.publicKey.type !== 'rsa') {
      return Promise.reject(new UnsupportedError(`key ${this.name} is ${this.publicKey.type}; only RSA keys decrypt`));
    }
    const op = padding === 'rsa-raw' ? NativeOp.decryptRaw : NativeOp.decryptOaepSha256;
    return this.queue.run(this.native, op, NativeHash.none, ciphertext, this.decryptionFailed);
  }
}
