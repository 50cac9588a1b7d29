import { createHash, createPublicKey } from 'node:crypto';
import type { PublicKeyInfo } from '../../core/crypto/keyid';
import type { KeyIndex, KeyRef } from '../../core/keys/registry';

/** COMPAT.md's certificate digest: SHA-256 of the RSA modulus written as uppercase hex text. */
export function certificateDigest(modulus: Buffer): Buffer {
  return createHash('sha256').update(modulus.toString('hex').toUpperCase()).digest();
}

/** The RSA modulus of a DER SubjectPublicKeyInfo, big-endian without a leading zero. */
export function rsaModulus(spki: Buffer): Buffer {
  const jwk = createPublicKey({ key: spki, format: 'der', type: 'spki' }).export({ format: 'jwk' });
  return Buffer.from(jwk.n!, 'base64url');
}

/**
 * The compat protocol's key-lookup index: edges may name an RSA key by its certificate digest
 * (tag 0x01) instead of its SKI. Registered with the key registry by the key set (src/daemon/key-set.ts).
 */
export const certificateDigestIndex: KeyIndex = {
  description: 'certificate digest',
  valueOf: (publicKey: PublicKeyInfo) => (publicKey.type === 'rsa' ? certificateDigest(rsaModulus(publicKey.spki)) : undefined),
};

/** The key-lookup indexes the compat protocol registers. */
export const COMPAT_KEY_INDEXES: readonly KeyIndex[] = [certificateDigestIndex];

/** How a compat request names its key: the SKI item (0x04) first, else the certificate digest (0x01). */
export function compatKeyRef(request: { readonly ski?: Buffer; readonly certDigest?: Buffer }): KeyRef | undefined {
  if (request.ski) return { ski: request.ski };
  if (request.certDigest) return { index: certificateDigestIndex, value: request.certDigest };
  return undefined;
}
