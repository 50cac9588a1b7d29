import * as pkcs11js from 'pkcs11js';
import { describeScheme, keyTypeOf, type DecryptPadding, type SignScheme } from '../../src/crypto/algorithms';
import { rawEcdsaToDer } from '../../src/crypto/ecdsa';
import { digestInfo, HASH_LENGTH, type HashName } from '../../src/crypto/hashes';
import type { PublicKeyInfo } from '../../src/crypto/keyid';
import { UnsupportedError } from '../../src/errors';
import type { KeyHandle } from '../../src/keys/types';
import type { Pkcs11Backend } from './backend';

/** Not among pkcs11js's constants (PKCS#11 3.0). */
export const CKM_EDDSA = 0x1057;

const PSS_HASH: Readonly<Record<'sha1' | 'sha224' | 'sha256' | 'sha384' | 'sha512', [number, number]>> = {
  sha1: [pkcs11js.CKM_SHA_1, pkcs11js.CKG_MGF1_SHA1],
  sha224: [pkcs11js.CKM_SHA224, pkcs11js.CKG_MGF1_SHA224],
  sha256: [pkcs11js.CKM_SHA256, pkcs11js.CKG_MGF1_SHA256],
  sha384: [pkcs11js.CKM_SHA384, pkcs11js.CKG_MGF1_SHA384],
  sha512: [pkcs11js.CKM_SHA512, pkcs11js.CKG_MGF1_SHA512],
};

/** A private key object on a token; `object` is re-found after the backend recovers. */
export class Pkcs11Key implements KeyHandle {
  constructor(
    readonly name: string,
    readonly backend: Pkcs11Backend,
    readonly publicKey: PublicKeyInfo,
    /** CKA_ID, to find the object again after a token comes back. */
    readonly id: Buffer,
    public object: pkcs11js.Handle,
  ) {}

  private get outputLength(): number {
    const bytes = Math.ceil(this.publicKey.bits / 8);
    return this.publicKey.type === 'rsa' ? bytes : this.publicKey.type === 'ed25519' ? 64 : 2 * bytes;
  }

  async sign(scheme: SignScheme, input: Buffer): Promise<Buffer> {
    if (keyTypeOf(scheme) !== this.publicKey.type) throw new UnsupportedError(`key ${this.name} is ${this.publicKey.type}; it cannot sign ${describeScheme(scheme)}`);
    const [mechanism, data] = this.signMechanism(scheme, input);
    const signature = await this.backend.run(this, 'sign', mechanism, data, this.outputLength);
    return scheme.kind === 'ecdsa' ? rawEcdsaToDer(signature) : signature;
  }

  async decrypt(padding: DecryptPadding, ciphertext: Buffer): Promise<Buffer> {
    if (this.publicKey.type !== 'rsa') throw new UnsupportedError(`key ${this.name} is ${this.publicKey.type}; only RSA keys decrypt`);
    const mechanism: pkcs11js.Mechanism =
      padding === 'rsa-raw'
        ? { mechanism: pkcs11js.CKM_RSA_X_509 }
        : {
            mechanism: pkcs11js.CKM_RSA_PKCS_OAEP,
            parameter: { type: pkcs11js.CK_PARAMS_RSA_OAEP, hashAlg: pkcs11js.CKM_SHA256, mgf: pkcs11js.CKG_MGF1_SHA256, source: 1 /* CKZ_DATA_SPECIFIED */ } as pkcs11js.RsaOAEP,
          };
    return this.backend.run(this, 'decrypt', mechanism, ciphertext, this.outputLength);
  }

  private signMechanism(scheme: SignScheme, input: Buffer): [pkcs11js.Mechanism, Buffer] {
    switch (scheme.kind) {
      case 'rsa-pkcs1':
        return [{ mechanism: pkcs11js.CKM_RSA_PKCS }, digestInfo(scheme.hash, input)];
      case 'rsa-pss': {
        const [hashAlg, mgf] = PSS_HASH[scheme.hash];
        return [{ mechanism: pkcs11js.CKM_RSA_PKCS_PSS, parameter: { type: pkcs11js.CK_PARAMS_RSA_PSS, hashAlg, mgf, saltLen: HASH_LENGTH[scheme.hash as HashName] } as pkcs11js.RsaPSS }, input];
      }
      case 'ecdsa':
        return [{ mechanism: pkcs11js.CKM_ECDSA }, input];
      case 'ed25519':
        return [{ mechanism: CKM_EDDSA }, input];
    }
  }
}
