import { createPublicKey } from 'node:crypto';
import { KeyFormatError } from '../../src/errors';

/** BCRYPT_RSAPUBLIC_BLOB: header magic RSA1. */
const RSA_PUBLIC_MAGIC = 0x31415352;
/** BCRYPT_ECCPUBLIC_BLOB magics of ECDSA keys (ECS1/3/5); ECDH keys cannot sign. */
const ECDSA_CURVES: ReadonlyMap<number, string> = new Map([
  [0x31534345, 'P-256'],
  [0x33534345, 'P-384'],
  [0x35534345, 'P-521'],
]);

function slice(blob: Buffer, start: number, length: number): Buffer {
  if (start + length > blob.length) throw new KeyFormatError(`CNG public key blob is truncated (${blob.length} bytes)`);
  return blob.subarray(start, start + length);
}

/**
 * DER SubjectPublicKeyInfo from the blob NCryptExportKey gives for BCRYPT_RSAPUBLIC_BLOB
 * or BCRYPT_ECCPUBLIC_BLOB (little-endian header, big-endian numbers), so the key gets
 * the same SKI as in every other backend.
 */
export function spkiFromPublicBlob(blob: Buffer): Buffer {
  if (blob.length < 8) throw new KeyFormatError(`CNG public key blob is truncated (${blob.length} bytes)`);
  const magic = blob.readUInt32LE(0);
  if (magic === RSA_PUBLIC_MAGIC) {
    if (blob.length < 24) throw new KeyFormatError(`CNG public key blob is truncated (${blob.length} bytes)`);
    const exponentLength = blob.readUInt32LE(8);
    const modulusLength = blob.readUInt32LE(12);
    const e = slice(blob, 24, exponentLength);
    const n = slice(blob, 24 + exponentLength, modulusLength);
    return createPublicKey({ key: { kty: 'RSA', n: n.toString('base64url'), e: e.toString('base64url') }, format: 'jwk' }).export({ format: 'der', type: 'spki' });
  }
  const curve = ECDSA_CURVES.get(magic);
  if (!curve) throw new KeyFormatError(`CNG public key blob has magic 0x${magic.toString(16)}: keylessd serves RSA and ECDSA P-256/P-384/P-521 keys`);
  const size = blob.readUInt32LE(4);
  const x = slice(blob, 8, size);
  const y = slice(blob, 8 + size, size);
  return createPublicKey({ key: { kty: 'EC', crv: curve, x: x.toString('base64url'), y: y.toString('base64url') }, format: 'jwk' }).export({ format: 'der', type: 'spki' });
}
