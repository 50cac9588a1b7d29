import { createPublicKey, type KeyObject } from 'node:crypto';

/**
 * CNG key blobs made from node keys: the fake shim answers with the public ones, and the
 * Wine tests import private ones into the real shim. Layouts: bcrypt.h BCRYPT_RSAKEY_BLOB
 * and BCRYPT_ECCKEY_BLOB, little-endian headers, big-endian numbers.
 */
const RSA_PUBLIC_MAGIC = 0x31415352; // RSA1
const RSA_FULL_PRIVATE_MAGIC = 0x33415352; // RSA3
const ECDSA_MAGIC: Readonly<Record<string, { public: number; private: number; bytes: number }>> = {
  'P-256': { public: 0x31534345, private: 0x32534345, bytes: 32 },
  'P-384': { public: 0x33534345, private: 0x34534345, bytes: 48 },
  'P-521': { public: 0x35534345, private: 0x36534345, bytes: 66 },
};

function header(...values: number[]): Buffer {
  const bytes = Buffer.alloc(values.length * 4);
  values.forEach((value, i) => bytes.writeUInt32LE(value, i * 4));
  return bytes;
}

const b64 = (value: string | undefined) => Buffer.from(value!, 'base64url');

/** A big-endian number left-padded with zeros to `length` bytes. */
function padded(value: Buffer, length: number): Buffer {
  return value.length >= length ? value : Buffer.concat([Buffer.alloc(length - value.length), value]);
}

export function publicBlob(key: KeyObject): Buffer {
  const jwk = (key.type === 'private' ? createPublicKey(key) : key).export({ format: 'jwk' });
  if (jwk.kty === 'RSA') {
    const [n, e] = [b64(jwk.n), b64(jwk.e)];
    return Buffer.concat([header(RSA_PUBLIC_MAGIC, n.length * 8, e.length, n.length, 0, 0), e, n]);
  }
  const curve = ECDSA_MAGIC[jwk.crv!]!;
  return Buffer.concat([header(curve.public, curve.bytes), padded(b64(jwk.x), curve.bytes), padded(b64(jwk.y), curve.bytes)]);
}

/** BCRYPT_RSAFULLPRIVATE_BLOB or BCRYPT_ECCPRIVATE_BLOB (ECDSA). */
export function privateBlob(key: KeyObject): Buffer {
  const jwk = key.export({ format: 'jwk' });
  if (jwk.kty === 'RSA') {
    const [n, e] = [b64(jwk.n), b64(jwk.e)];
    const half = n.length / 2;
    const primes = [jwk.p, jwk.q, jwk.dp, jwk.dq, jwk.qi].map((v) => padded(b64(v), half));
    return Buffer.concat([header(RSA_FULL_PRIVATE_MAGIC, n.length * 8, e.length, n.length, half, half), e, n, ...primes, padded(b64(jwk.d), n.length)]);
  }
  const curve = ECDSA_MAGIC[jwk.crv!]!;
  return Buffer.concat([header(curve.private, curve.bytes), ...[jwk.x, jwk.y, jwk.d].map((v) => padded(b64(v), curve.bytes))]);
}
