import { createPublicKey } from 'node:crypto';
import { KeyFormatError } from '../../src/errors';

/** Curve OIDs (DER, as CKA_EC_PARAMS holds them) to JWK curve names. */
const CURVES: ReadonlyArray<[string, string]> = [
  ['06082a8648ce3d030107', 'P-256'],
  ['06052b81040022', 'P-384'],
  ['06052b81040023', 'P-521'],
];
const ED25519_PARAMS = ['06032b6570', '130c656477617264733235353139']; // OID 1.3.101.112, PrintableString "edwards25519"

/**
 * CKA_EC_POINT is normally a DER OCTET STRING around the point; some tokens return the
 * bare point. It is unwrapped when the DER header's length covers exactly the rest.
 */
function unwrapPoint(point: Buffer): Buffer {
  if (point[0] !== 0x04 || point.length < 3) return point;
  const first = point[1]!;
  const [headerLength, length] = first & 0x80 ? (first === 0x81 ? [3, point[2]!] : first === 0x82 ? [4, (point[2]! << 8) | point[3]!] : [0, -1]) : [2, first];
  return headerLength + length === point.length ? point.subarray(headerLength) : point;
}

export function rsaSpki(modulus: Buffer, exponent: Buffer): Buffer {
  return createPublicKey({ key: { kty: 'RSA', n: modulus.toString('base64url'), e: exponent.toString('base64url') }, format: 'jwk' }).export({ format: 'der', type: 'spki' });
}

/** DER SPKI of an EC or Edwards public key from CKA_EC_PARAMS and CKA_EC_POINT. */
export function ecSpki(params: Buffer, point: Buffer): Buffer {
  const hex = params.toString('hex');
  if (ED25519_PARAMS.includes(hex)) {
    const raw = unwrapPoint(point);
    return createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: raw.toString('base64url') }, format: 'jwk' }).export({ format: 'der', type: 'spki' });
  }
  const curve = CURVES.find(([oid]) => oid === hex)?.[1];
  if (!curve) throw new KeyFormatError(`unsupported curve (EC params ${hex}): keylessd serves P-256, P-384, P-521 and Ed25519`);
  const raw = unwrapPoint(point);
  if (raw[0] !== 0x04 || raw.length % 2 !== 1) throw new KeyFormatError('only uncompressed EC points are supported');
  // Assembled as DER rather than through a KeyObject: a token of thousands of keys builds
  // thousands of these on the event loop. Whoever uses it parses it (and so checks the point).
  return der(0x30, Buffer.concat([der(0x30, Buffer.concat([EC_PUBLIC_KEY_OID, params])), der(0x03, Buffer.concat([Buffer.from([0]), raw]))]));
}

/** OID 1.2.840.10045.2.1 (id-ecPublicKey), DER. */
const EC_PUBLIC_KEY_OID = Buffer.from('06072a8648ce3d0201', 'hex');

function der(tag: number, content: Buffer): Buffer {
  const n = content.length;
  const length = n < 0x80 ? [n] : n < 0x100 ? [0x81, n] : [0x82, n >> 8, n & 0xff];
  return Buffer.concat([Buffer.from([tag, ...length]), content]);
}
