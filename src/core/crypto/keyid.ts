import { createHash, createPublicKey } from 'node:crypto';
import { KeyFormatError } from '../../errors';
import type { KeyType } from './algorithms';

/**
 * The public half of a key and the identifiers derived from it. Every backend builds one
 * from the DER SubjectPublicKeyInfo, so the same key has the same SKI everywhere.
 */
export interface PublicKeyInfo {
  readonly type: KeyType;
  readonly bits: number;
  /** 'P-256' | 'P-384' | 'P-521' for ec keys, '' otherwise. */
  readonly curve: string;
  /** DER SubjectPublicKeyInfo. */
  readonly spki: Buffer;
  /** SHA-1 of the subjectPublicKey BIT STRING contents (RFC 5280 §4.2.1.2 method 1). */
  readonly ski: Buffer;
  readonly spkiSha256: Buffer;
}

const CURVE_NAMES: Readonly<Record<string, string>> = {
  prime256v1: 'P-256',
  secp384r1: 'P-384',
  secp521r1: 'P-521',
};

/** Reads one DER TLV at `offset`; returns where its contents start and end. */
function readTlv(der: Buffer, offset: number): { tag: number; start: number; end: number } {
  const tag = der[offset];
  let lengthByte = der[offset + 1];
  if (tag === undefined || lengthByte === undefined) throw new KeyFormatError('truncated DER');
  let start = offset + 2;
  let length = lengthByte;
  if (lengthByte & 0x80) {
    const count = lengthByte & 0x7f;
    if (count < 1 || count > 3) throw new KeyFormatError('unsupported DER length');
    length = 0;
    for (let i = 0; i < count; i++) {
      const b = der[start + i];
      if (b === undefined) throw new KeyFormatError('truncated DER');
      length = length * 256 + b;
    }
    start += count;
  }
  const end = start + length;
  if (end > der.length) throw new KeyFormatError('truncated DER');
  return { tag, start, end };
}

/** The subjectPublicKey bits of a SubjectPublicKeyInfo (without the unused-bits byte). */
export function subjectPublicKeyBits(spki: Buffer): Buffer {
  const outer = readTlv(spki, 0);
  if (outer.tag !== 0x30) throw new KeyFormatError('SubjectPublicKeyInfo is not a SEQUENCE');
  const algorithm = readTlv(spki, outer.start);
  const bitString = readTlv(spki, algorithm.end);
  if (bitString.tag !== 0x03) throw new KeyFormatError('subjectPublicKey is not a BIT STRING');
  return spki.subarray(bitString.start + 1, bitString.end);
}

export function computeSki(spki: Buffer): Buffer {
  return createHash('sha1').update(subjectPublicKeyBits(spki)).digest();
}

/** Builds PublicKeyInfo from a DER SPKI. Throws an Error naming the problem for key types keylessd cannot serve. */
export function describePublicKey(spki: Buffer): PublicKeyInfo {
  const key = createPublicKey({ key: spki, format: 'der', type: 'spki' });
  const details = key.asymmetricKeyDetails ?? {};
  const ids = { spki, ski: computeSki(spki), spkiSha256: createHash('sha256').update(spki).digest() };
  switch (key.asymmetricKeyType) {
    case 'rsa': {
      const bits = details.modulusLength ?? 0;
      if (bits < 2048 || bits > 4096) throw new KeyFormatError(`RSA keys must be 2048 to 4096 bits, this one has ${bits}`);
      return { type: 'rsa', bits, curve: '', ...ids };
    }
    case 'ec': {
      const curve = CURVE_NAMES[details.namedCurve ?? ''];
      if (!curve) throw new KeyFormatError(`unsupported curve ${details.namedCurve ?? '(unnamed)'}: keylessd serves P-256, P-384 and P-521`);
      return { type: 'ec', bits: Number(curve.slice(2)), curve, ...ids };
    }
    case 'ed25519':
      return { type: 'ed25519', bits: 256, curve: '', ...ids };
    default:
      throw new KeyFormatError(`unsupported key type ${key.asymmetricKeyType}: keylessd serves RSA, ECDSA and Ed25519`);
  }
}
