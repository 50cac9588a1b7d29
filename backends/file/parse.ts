import { createPrivateKey, type KeyObject } from 'node:crypto';

/**
 * Turns the bytes of a key file into a private KeyObject, whatever its container:
 * PEM or DER; PKCS#8 (plain or encrypted), PKCS#1 (RSA) or SEC1 (EC). Throws an Error
 * whose message says why the file cannot be used; it never includes key bytes or the passphrase.
 */
export function parsePrivateKey(bytes: Buffer, passphrase: string | undefined): KeyObject {
  const text = bytes.toString('latin1');
  if (text.includes('-----BEGIN')) {
    if (!/-----BEGIN (ENCRYPTED |RSA |EC )?PRIVATE KEY-----/.test(text)) {
      const kind = /-----BEGIN ([A-Z0-9 ]+)-----/.exec(text)?.[1] ?? 'unknown';
      throw new Error(`holds a ${kind.toLowerCase()}, not a private key`);
    }
    if (text.includes('-----BEGIN ENCRYPTED PRIVATE KEY-----') && passphrase === undefined) {
      throw new Error('is encrypted and no passphrase_file is configured for it');
    }
    if (/Proc-Type:\s*4,\s*ENCRYPTED/.test(text) && passphrase === undefined) {
      throw new Error('is encrypted with legacy PEM encryption (Proc-Type: 4,ENCRYPTED) and no passphrase_file is configured for it');
    }
    return withReadableError(() => createPrivateKey({ key: bytes, format: 'pem', passphrase }));
  }
  const attempts: Array<'pkcs8' | 'pkcs1' | 'sec1'> = ['pkcs8', 'pkcs1', 'sec1'];
  for (const type of attempts) {
    try {
      return createPrivateKey({ key: bytes, format: 'der', type, passphrase });
    } catch (err) {
      if (isWrongPassphrase(err)) throw new Error('cannot be decrypted: wrong passphrase');
      if ((err as { code?: string }).code === 'ERR_MISSING_PASSPHRASE') {
        throw new Error('is encrypted and no passphrase_file is configured for it');
      }
    }
  }
  throw new Error('is not a PEM or DER private key (PKCS#8, PKCS#1 or SEC1)');
}

function isWrongPassphrase(err: unknown): boolean {
  const message = String((err as Error).message ?? '');
  return /bad decrypt|wrong password|unable to decrypt/i.test(message);
}

function withReadableError(parse: () => KeyObject): KeyObject {
  try {
    return parse();
  } catch (err) {
    if (isWrongPassphrase(err)) throw new Error('cannot be decrypted: wrong passphrase');
    throw new Error(`cannot be parsed: ${(err as Error).message}`);
  }
}
