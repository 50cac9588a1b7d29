import { createHash, createPrivateKey, createPublicKey, sign, verify, type KeyObject } from 'node:crypto';
import { KeyFormatError } from '../errors';

/**
 * Signed audit records (checkpoints and retention records). The signature is the last
 * field of the line, `,"signature":"<base64>"}`; it signs the line without that field,
 * prefixed with a domain label so it can never be mistaken for a signature of anything
 * else the same key might sign.
 */
const DOMAIN = 'keylessd-audit-record-v1\n';
const SIGNATURE_SUFFIX = /,"signature":"([A-Za-z0-9+/=]+)"\}$/;

export interface AuditSigner {
  /** First 16 hex digits of the SHA-256 of the public key (SPKI DER): names the key in records. */
  readonly keyId: string;
  /** `unsigned` is a JSON object text; returns it with the signature as its last field. */
  sign(unsigned: string): string;
}

export function auditKeyId(publicKey: KeyObject): string {
  return createHash('sha256')
    .update(publicKey.export({ type: 'spki', format: 'der' }))
    .digest('hex')
    .slice(0, 16);
}

export function loadAuditSigner(pem: string | Buffer): AuditSigner {
  const privateKey = createPrivateKey(pem);
  if (privateKey.asymmetricKeyType !== 'ed25519') throw new KeyFormatError(`the audit signing key must be Ed25519, not ${privateKey.asymmetricKeyType}`);
  const keyId = auditKeyId(createPublicKey(privateKey));
  return {
    keyId,
    sign(unsigned) {
      const signature = sign(null, Buffer.from(DOMAIN + unsigned), privateKey).toString('base64');
      return `${unsigned.slice(0, -1)},"signature":"${signature}"}`;
    },
  };
}

export function loadAuditPublicKey(pem: string | Buffer): KeyObject {
  const key = createPublicKey(pem);
  if (key.asymmetricKeyType !== 'ed25519') throw new KeyFormatError(`the audit public key must be Ed25519, not ${key.asymmetricKeyType}`);
  return key;
}

/** Whether `line` carries a valid signature by `publicKey`; a reason when it does not. */
export function checkSignature(line: string, publicKey: KeyObject): string | undefined {
  const match = SIGNATURE_SUFFIX.exec(line);
  if (!match) return 'it carries no signature';
  const unsigned = `${line.slice(0, match.index)}}`;
  const ok = verify(null, Buffer.from(DOMAIN + unsigned), publicKey, Buffer.from(match[1]!, 'base64'));
  return ok ? undefined : 'its signature does not verify with the given public key (forged, altered, or signed by another key)';
}
