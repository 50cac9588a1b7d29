import type { KeyObject } from 'node:crypto';
import { createPublicKey } from 'node:crypto';
import { describeScheme, keyTypeOf, type DecryptPadding, type SignScheme } from '../../src/core/crypto/algorithms';
import { describePublicKey, type PublicKeyInfo } from '../../src/core/crypto/keyid';
import { CryptoFailureError, UnsupportedError } from '../../src/errors';
import type { Backend, KeyHandle } from '../../src/core/keys/types';
import { nativeAddon, NativeHash, NativeOp, type NativeKey } from './native';

const HASH_NUMBER = {
  'md5-sha1': NativeHash.none,
  sha1: NativeHash.sha1,
  sha224: NativeHash.sha224,
  sha256: NativeHash.sha256,
  sha384: NativeHash.sha384,
  sha512: NativeHash.sha512,
} as const;

const SIGN_OP = { 'rsa-pkcs1': NativeOp.rsaPkcs1, 'rsa-pss': NativeOp.rsaPss, ecdsa: NativeOp.ecdsa, ed25519: NativeOp.ed25519 } as const;

/** A key held in memory by the OpenSSL addon; operations run on the libuv pool. */
export class FileKey implements KeyHandle {
  readonly publicKey: PublicKeyInfo;
  private readonly native: NativeKey;

  constructor(
    readonly name: string,
    readonly backend: Backend,
    privateKey: KeyObject,
  ) {
    this.publicKey = describePublicKey(createPublicKey(privateKey).export({ format: 'der', type: 'spki' }));
    this.native = nativeAddon().loadKey(privateKey.export({ format: 'der', type: 'pkcs8' }));
  }

  sign(scheme: SignScheme, input: Buffer): Promise<Buffer> {
    if (keyTypeOf(scheme) !== this.publicKey.type) {
      return Promise.reject(new UnsupportedError(`key ${this.name} is ${this.publicKey.type}; it cannot sign ${describeScheme(scheme)}`));
    }
    const hash = scheme.kind === 'ed25519' ? NativeHash.none : HASH_NUMBER[scheme.hash];
    return this.run(SIGN_OP[scheme.kind], hash, input, 'signature');
  }

  decrypt(padding: DecryptPadding, ciphertext: Buffer): Promise<Buffer> {
    if (this.publicKey.type !== 'rsa') {
      return Promise.reject(new UnsupportedError(`key ${this.name} is ${this.publicKey.type}; only RSA keys decrypt`));
    }
    const op = padding === 'rsa-raw' ? NativeOp.decryptRaw : NativeOp.decryptOaepSha256;
    return this.run(op, NativeHash.none, ciphertext, 'decryption');
  }

  private run(op: number, hash: number, input: Buffer, what: string): Promise<Buffer> {
    return nativeAddon()
      .run(this.native, op, hash, input)
      .catch((err: Error) => {
        throw new CryptoFailureError(`${what} with key ${this.name} failed: ${err.message}`);
      });
  }
}
