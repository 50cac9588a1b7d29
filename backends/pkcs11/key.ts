import * as pkcs11js from 'pkcs11js';
import { describeScheme, keyTypeOf, type DecryptPadding, type SignScheme } from '../../src/core/crypto/algorithms';
import { rawEcdsaToDer } from '../../src/core/crypto/ecdsa';
import { digestInfo, HASH_LENGTH } from '../../src/core/crypto/hashes';
import type { PublicKeyInfo } from '../../src/core/crypto/keyid';
import { UnsupportedError } from '../../src/errors';
import type { KeyHandle } from '../../src/core/keys/types';
import type { Pkcs11Backend } from './backend';

/** Not among pkcs11js's constants (PKCS#11 3.0). */
export const CKM_EDDSA = 0x1057;
/** CK_RSA_PKCS_OAEP_PARAMS.source: the label (empty here) is given as data. */
const CKZ_DATA_SPECIFIED = 1;

type PssHash = Extract<SignScheme, { kind: 'rsa-pss' }>['hash'];
const pss = (hashAlg: number, mgf: number, hash: PssHash): pkcs11js.Mechanism => ({
  mechanism: pkcs11js.CKM_RSA_PKCS_PSS,
  parameter: { type: pkcs11js.CK_PARAMS_RSA_PSS, hashAlg, mgf, saltLen: HASH_LENGTH[hash] } as pkcs11js.RsaPSS,
});

// Built once: the sign path runs thousands of times a second.
const PSS: Readonly<Record<PssHash, pkcs11js.Mechanism>> = {
  sha1: pss(pkcs11js.CKM_SHA_1, pkcs11js.CKG_MGF1_SHA1, 'sha1'),
  sha224: pss(pkcs11js.CKM_SHA224, pkcs11js.CKG_MGF1_SHA224, 'sha224'),
  sha256: pss(pkcs11js.CKM_SHA256, pkcs11js.CKG_MGF1_SHA256, 'sha256'),
  sha384: pss(pkcs11js.CKM_SHA384, pkcs11js.CKG_MGF1_SHA384, 'sha384'),
  sha512: pss(pkcs11js.CKM_SHA512, pkcs11js.CKG_MGF1_SHA512, 'sha512'),
};
const RSA_PKCS: pkcs11js.Mechanism = { mechanism: pkcs11js.CKM_RSA_PKCS };
const ECDSA: pkcs11js.Mechanism = { mechanism: pkcs11js.CKM_ECDSA };
const EDDSA: pkcs11js.Mechanism = { mechanism: CKM_EDDSA };
const DECRYPT: Readonly<Record<DecryptPadding, pkcs11js.Mechanism>> = {
  'rsa-raw': { mechanism: pkcs11js.CKM_RSA_X_509 },
  'rsa-oaep-sha256': {
    mechanism: pkcs11js.CKM_RSA_PKCS_OAEP,
    parameter: { type: pkcs11js.CK_PARAMS_RSA_OAEP, hashAlg: pkcs11js.CKM_SHA256, mgf: pkcs11js.CKG_MGF1_SHA256, source: CKZ_DATA_SPECIFIED } as pkcs11js.RsaOAEP,
  },
};

/**
 * A private key object on a token. `object` is re-found by label and id after the backend
 * recovers, and is undefined if the key was not there any more.
 */
export class Pkcs11Key implements KeyHandle {
  /** Bytes the token returns: the modulus for RSA, r||s for ECDSA, R||S for Ed25519. */
  private readonly outputLength: number;

  constructor(
    readonly name: string,
    readonly backend: Pkcs11Backend,
    readonly publicKey: PublicKeyInfo,
    /** CKA_ID, to find the object again after a token comes back. */
    readonly id: Buffer,
    public object: pkcs11js.Handle | undefined,
  ) {
    const bytes = Math.ceil(publicKey.bits / 8);
    this.outputLength = publicKey.type === 'rsa' ? bytes : publicKey.type === 'ed25519' ? 64 : 2 * bytes;
  }

  async sign(scheme: SignScheme, input: Buffer): Promise<Buffer> {
    if (keyTypeOf(scheme) !== this.publicKey.type) throw new UnsupportedError(`key ${this.name} is ${this.publicKey.type}; it cannot sign ${describeScheme(scheme)}`);
    switch (scheme.kind) {
      case 'rsa-pkcs1':
        return this.backend.run(this, 'sign', RSA_PKCS, digestInfo(scheme.hash, input), this.outputLength);
      case 'rsa-pss':
        return this.backend.run(this, 'sign', PSS[scheme.hash], input, this.outputLength);
      case 'ecdsa':
        return rawEcdsaToDer(await this.backend.run(this, 'sign', ECDSA, input, this.outputLength));
      case 'ed25519':
        return this.backend.run(this, 'sign', EDDSA, input, this.outputLength);
    }
  }

  async decrypt(padding: DecryptPadding, ciphertext: Buffer): Promise<Buffer> {
    if (this.publicKey.type !== 'rsa') throw new UnsupportedError(`key ${this.name} is ${this.publicKey.type}; only RSA keys decrypt`);
    return this.backend.run(this, 'decrypt', DECRYPT[padding], ciphertext, this.outputLength);
  }
}
