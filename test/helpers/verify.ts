import { constants, createPublicKey, publicDecrypt, verify, type KeyObject } from 'node:crypto';
import { SCHEME_OF, type SignatureAlgorithm } from '../../src/core/crypto/algorithms';
import { HASH_LENGTH, hashMessage } from '../../src/core/crypto/hashes';

/** Checks a signature over `message` the way a TLS peer would, with node's own verifier. */
export function verifies(algorithm: SignatureAlgorithm, key: KeyObject, message: Buffer, signature: Buffer): boolean {
  const scheme = SCHEME_OF[algorithm];
  const publicKey = createPublicKey(key);
  switch (scheme.kind) {
    case 'ed25519':
      return verify(null, message, publicKey, signature);
    case 'ecdsa':
      return scheme.hash === 'md5-sha1' ? false : verify(scheme.hash, message, publicKey, signature);
    case 'rsa-pss':
      return verify(scheme.hash, message, { key: publicKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: HASH_LENGTH[scheme.hash] }, signature);
    case 'rsa-pkcs1':
      if (scheme.hash === 'md5-sha1') {
        // No DigestInfo: the recovered block is exactly MD5 || SHA-1 of the message.
        return publicDecrypt({ key: publicKey, padding: constants.RSA_PKCS1_PADDING }, signature).equals(hashMessage('md5-sha1', message));
      }
      return verify(scheme.hash, message, publicKey, signature);
  }
}
