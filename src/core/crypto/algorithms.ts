import { HASH_LENGTH, type HashName } from './hashes';
import { InvalidArgumentError } from '../../errors';

export type KeyType = 'rsa' | 'ec' | 'ed25519';

/**
 * What a backend is asked to do. For every kind but ed25519 the input is a digest of
 * HASH_LENGTH[hash] bytes; ed25519 signs the message itself.
 */
export type SignScheme =
  | { readonly kind: 'rsa-pkcs1'; readonly hash: HashName }
  | { readonly kind: 'rsa-pss'; readonly hash: Exclude<HashName, 'md5-sha1'> }
  | { readonly kind: 'ecdsa'; readonly hash: HashName }
  | { readonly kind: 'ed25519' };

export type DecryptPadding = 'rsa-raw' | 'rsa-oaep-sha256';

/** keyless.v1 SignatureAlgorithm names (PROTOCOL.md), in enum order after UNSPECIFIED. */
export const SIGNATURE_ALGORITHMS = [
  'RSA_PKCS1_SHA256',
  'RSA_PKCS1_SHA384',
  'RSA_PKCS1_SHA512',
  'RSA_PKCS1_SHA1',
  'RSA_PKCS1_MD5_SHA1',
  'RSA_PSS_SHA256',
  'RSA_PSS_SHA384',
  'RSA_PSS_SHA512',
  'ECDSA_SHA256',
  'ECDSA_SHA384',
  'ECDSA_SHA512',
  'ECDSA_SHA1',
  'ED25519',
] as const;
export type SignatureAlgorithm = (typeof SIGNATURE_ALGORITHMS)[number];

/** Signatures only the Cloudflare-compatible port can ask for: keyless.v1 has no enum value for them. */
export const COMPAT_ONLY_ALGORITHMS = ['RSA_PKCS1_SHA224', 'ECDSA_SHA224', 'ECDSA_MD5_SHA1'] as const;

/**
 * Every signature algorithm a request can name, on either port: the one closed set that
 * metrics labels, policy and audit records draw from.
 */
export const ALGORITHM_NAMES = [...SIGNATURE_ALGORITHMS, ...COMPAT_ONLY_ALGORITHMS] as const;
export type AlgorithmName = (typeof ALGORITHM_NAMES)[number];

export function isSignatureAlgorithm(name: string): name is SignatureAlgorithm {
  return (SIGNATURE_ALGORITHMS as readonly string[]).includes(name);
}

export const SCHEME_OF: Readonly<Record<AlgorithmName, SignScheme>> = {
  RSA_PKCS1_SHA256: { kind: 'rsa-pkcs1', hash: 'sha256' },
  RSA_PKCS1_SHA384: { kind: 'rsa-pkcs1', hash: 'sha384' },
  RSA_PKCS1_SHA512: { kind: 'rsa-pkcs1', hash: 'sha512' },
  RSA_PKCS1_SHA1: { kind: 'rsa-pkcs1', hash: 'sha1' },
  RSA_PKCS1_MD5_SHA1: { kind: 'rsa-pkcs1', hash: 'md5-sha1' },
  RSA_PSS_SHA256: { kind: 'rsa-pss', hash: 'sha256' },
  RSA_PSS_SHA384: { kind: 'rsa-pss', hash: 'sha384' },
  RSA_PSS_SHA512: { kind: 'rsa-pss', hash: 'sha512' },
  ECDSA_SHA256: { kind: 'ecdsa', hash: 'sha256' },
  ECDSA_SHA384: { kind: 'ecdsa', hash: 'sha384' },
  ECDSA_SHA512: { kind: 'ecdsa', hash: 'sha512' },
  ECDSA_SHA1: { kind: 'ecdsa', hash: 'sha1' },
  ED25519: { kind: 'ed25519' },
  RSA_PKCS1_SHA224: { kind: 'rsa-pkcs1', hash: 'sha224' },
  ECDSA_SHA224: { kind: 'ecdsa', hash: 'sha224' },
  ECDSA_MD5_SHA1: { kind: 'ecdsa', hash: 'md5-sha1' },
};

/** The name of the algorithm that signs with `scheme` (every scheme a request can ask for has one). */
export function algorithmFor(scheme: SignScheme): AlgorithmName {
  const name = ALGORITHM_NAMES.find((candidate) => {
    const known = SCHEME_OF[candidate];
    return known.kind === scheme.kind && (known.kind === 'ed25519' || (scheme.kind !== 'ed25519' && known.hash === scheme.hash));
  });
  if (name === undefined) throw new InvalidArgumentError(`no algorithm name for ${describeScheme(scheme)}`);
  return name;
}

export function keyTypeOf(scheme: SignScheme): KeyType {
  return scheme.kind === 'ecdsa' ? 'ec' : scheme.kind === 'ed25519' ? 'ed25519' : 'rsa';
}

/** The keyless.v1 algorithms a key of this type can perform. */
export function algorithmsFor(type: KeyType): SignatureAlgorithm[] {
  return SIGNATURE_ALGORITHMS.filter((name) => keyTypeOf(SCHEME_OF[name]) === type);
}

export function digestLength(scheme: SignScheme): number | undefined {
  return scheme.kind === 'ed25519' ? undefined : HASH_LENGTH[scheme.hash];
}

export function describeScheme(scheme: SignScheme): string {
  return scheme.kind === 'ed25519' ? 'ed25519' : `${scheme.kind}-${scheme.hash}`;
}
