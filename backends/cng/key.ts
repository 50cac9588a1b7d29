import { describeScheme, keyTypeOf, type DecryptPadding, type SignScheme } from '../../src/core/crypto/algorithms';
import { rawEcdsaToDer } from '../../src/core/crypto/ecdsa';
import type { HashName } from '../../src/core/crypto/hashes';
import type { PublicKeyInfo } from '../../src/core/crypto/keyid';
import { UnsupportedError } from '../../src/errors';
import type { KeyHandle } from '../../src/core/keys/types';
import type { CngBackend } from './backend';
import { CngHash, CngOperation, CngPadding } from './codec';

/** CNG names no SHA-224 signature hash (BCRYPT_SHA224_ALGORITHM does not exist). */
const CNG_HASH: Readonly<Record<HashName, CngHash | undefined>> = {
  'md5-sha1': CngHash.md5Sha1,
  sha1: CngHash.sha1,
  sha224: undefined,
  sha256: CngHash.sha256,
  sha384: CngHash.sha384,
  sha512: CngHash.sha512,
};

/** A persisted CNG key, used by name through the backend's shim. */
export class CngKey implements KeyHandle {
  constructor(
    readonly name: string,
    readonly backend: CngBackend,
    readonly publicKey: PublicKeyInfo,
    /** The CNG key name and scope the shim opens it by. */
    readonly keyName: string,
    readonly machine: boolean,
  ) {}

  async sign(scheme: SignScheme, input: Buffer): Promise<Buffer> {
    if (scheme.kind === 'ed25519' || keyTypeOf(scheme) !== this.publicKey.type) {
      throw new UnsupportedError(`key ${this.name} is ${this.publicKey.type}; it cannot sign ${describeScheme(scheme)}`);
    }
    const hash = CNG_HASH[scheme.hash];
    if (hash === undefined) throw new UnsupportedError(`CNG cannot sign ${describeScheme(scheme)}: it has no ${scheme.hash} signature hash`);
    const padding = scheme.kind === 'rsa-pkcs1' ? CngPadding.pkcs1 : scheme.kind === 'rsa-pss' ? CngPadding.pss : CngPadding.none;
    const signature = await this.backend.run(this, { operation: CngOperation.sign, padding, hash, payload: input }, `${describeScheme(scheme)} signature with key ${this.name}`);
    return scheme.kind === 'ecdsa' ? rawEcdsaToDer(signature) : signature;
  }

  async decrypt(padding: DecryptPadding, ciphertext: Buffer): Promise<Buffer> {
    if (this.publicKey.type !== 'rsa') throw new UnsupportedError(`key ${this.name} is ${this.publicKey.type}; only RSA keys decrypt`);
    const cngPadding = padding === 'rsa-raw' ? CngPadding.raw : CngPadding.oaepSha256;
    const plain = await this.backend.run(this, { operation: CngOperation.decrypt, padding: cngPadding, hash: CngHash.none, payload: ciphertext }, `${padding} decryption with key ${this.name}`);
    return padding === 'rsa-raw' ? leftPad(plain, Math.ceil(this.publicKey.bits / 8)) : plain;
  }
}

/** A raw RSA block is modulus-length; a provider may drop its leading zero bytes. */
function leftPad(block: Buffer, length: number): Buffer {
  return block.length >= length ? block : Buffer.concat([Buffer.alloc(length - block.length), block]);
}
