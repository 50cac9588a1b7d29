import { createHash } from 'node:crypto';

/** Hashes a signature can be computed over. `md5-sha1` is TLS 1.0/1.1's 36-byte MD5||SHA-1. */
export type HashName = 'md5-sha1' | 'sha1' | 'sha224' | 'sha256' | 'sha384' | 'sha512';

export const HASH_LENGTH: Readonly<Record<HashName, number>> = {
  'md5-sha1': 36,
  sha1: 20,
  sha224: 28,
  sha256: 32,
  sha384: 48,
  sha512: 64,
};

export function hashMessage(hash: HashName, message: Uint8Array): Buffer {
  if (hash === 'md5-sha1') {
    return Buffer.concat([createHash('md5').update(message).digest(), createHash('sha1').update(message).digest()]);
  }
  return createHash(hash).update(message).digest();
}

/**
 * DER DigestInfo prefixes (RFC 8017 §9.2 note 1): prefix || digest is what PKCS#1 v1.5
 * signs. Backends whose primitive is raw PKCS#1 padding (PKCS#11 CKM_RSA_PKCS) need them;
 * md5-sha1 has none by definition.
 */
const DIGEST_INFO_PREFIX: Readonly<Record<Exclude<HashName, 'md5-sha1'>, Buffer>> = {
  sha1: Buffer.from('3021300906052b0e03021a05000414', 'hex'),
  sha224: Buffer.from('302d300d06096086480165030402040500041c', 'hex'),
  sha256: Buffer.from('3031300d060960864801650304020105000420', 'hex'),
  sha384: Buffer.from('3041300d060960864801650304020205000430', 'hex'),
  sha512: Buffer.from('3051300d060960864801650304020305000440', 'hex'),
};

export function digestInfo(hash: HashName, digest: Buffer): Buffer {
  return hash === 'md5-sha1' ? digest : Buffer.concat([DIGEST_INFO_PREFIX[hash], digest]);
}
