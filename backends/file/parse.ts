import { createPrivateKey, type KeyObject } from 'node:crypto';
import { KeylessdError } from '../../src/errors';

/**
 * A key file (or its passphrase file) cannot be used. The message is a clause about the file
 * ("is encrypted and no passphrase_file is configured for it"): the backend writes
 * `skipping key file PATH: it MESSAGE`. It never includes key bytes or the passphrase.
 */
export class KeyFileError extends KeylessdError {
  readonly code = 'KEY_FILE';
}

/**
 * Turns the bytes of a key file into a private KeyObject, whatever its container:
 * PEM or DER; PKCS#8 (plain or encrypted), PKCS#1 (RSA) or SEC1 (EC). Throws a KeyFileError
 * whose message says why the file cannot be used; it never includes key bytes or the passphrase.
 */
export function parsePrivateKey(bytes: Buffer, passphrase: string | undefined): KeyObject {
  const text = bytes.toString('latin1');
  if (text.includes('-----BEGIN')) {
    if (!/-----BEGIN (ENCRYPTED |RSA |EC )?PRIVATE KEY-----/.test(text)) {
      const kind = /-----BEGIN ([A-Z0-9 ]+)-----/.exec(text)?.[1] ?? 'unknown';
      throw new KeyFileError(`holds a ${kind.toLowerCase()}, not a private key`);
    }
    const encryptedPkcs8 = text.includes('-----BEGIN ENCRYPTED PRIVATE KEY-----');
    const encryptedLegacy = /Proc-Type:\s*4,\s*ENCRYPTED/.test(text);
    if (encryptedPkcs8 && passphrase === undefined) {
      throw new KeyFileError('is encrypted and no passphrase_file is configured for it');
    }
    if (encryptedLegacy && passphrase === undefined) {
      throw new KeyFileError('is encrypted with legacy PEM encryption (Proc-Type: 4,ENCRYPTED) and no passphrase_file is configured for it');
    }
    try {
      return createPrivateKey({ key: bytes, format: 'pem', passphrase });
    } catch (err) {
      if (encryptedPkcs8 || encryptedLegacy || isWrongPassphrase(err)) throw wrongPassphrase(err);
      throw new KeyFileError(`cannot be parsed: ${(err as Error).message}`, { cause: err });
    }
  }
  const attempts: Array<'pkcs8' | 'pkcs1' | 'sec1'> = ['pkcs8', 'pkcs1', 'sec1'];
  for (const type of attempts) {
    try {
      return createPrivateKey({ key: bytes, format: 'der', type, passphrase });
    } catch (err) {
      if (isWrongPassphrase(err) || (type === 'pkcs8' && passphrase !== undefined && isEncryptedPkcs8Der(bytes))) throw wrongPassphrase(err);
      if ((err as { code?: string }).code === 'ERR_MISSING_PASSPHRASE') {
        throw new KeyFileError('is encrypted and no passphrase_file is configured for it');
      }
    }
  }
  throw new KeyFileError('is not a PEM or DER private key (PKCS#8, PKCS#1 or SEC1)');
}

/*
 * An encrypted key that the configured passphrase does not open: OpenSSL cannot tell a wrong
 * passphrase from a damaged file. A wrong passphrase usually fails the CBC padding check
 * ("bad decrypt"), but about once in 256 tries it passes and the garbage then fails to decode
 * ("DECODER routines::unsupported", or an ASN.1 error for DER), which is also what a damaged
 * file gives. Every such failure gets one message that names both causes, most likely first.
 */
function wrongPassphrase(cause: unknown): KeyFileError {
  return new KeyFileError('cannot be decrypted: wrong passphrase, or the file is damaged', { cause });
}

function isWrongPassphrase(err: unknown): boolean {
  const message = String((err as Error).message ?? '');
  return /bad decrypt|wrong password|unable to decrypt/i.test(message);
}

/** A DER encrypted PKCS#8 key: opening it without a passphrase asks for one. */
function isEncryptedPkcs8Der(bytes: Buffer): boolean {
  try {
    createPrivateKey({ key: bytes, format: 'der', type: 'pkcs8' });
    return false;
  } catch (err) {
    return (err as { code?: string }).code === 'ERR_MISSING_PASSPHRASE';
  }
}
