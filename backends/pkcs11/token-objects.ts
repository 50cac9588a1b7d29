import { X509Certificate } from 'node:crypto';
import * as pkcs11js from 'pkcs11js';
import { describePublicKey, type PublicKeyInfo } from '../../src/crypto/keyid';
import type { SkippedKey } from '../../src/keys/types';
import { ckrCode } from './module';
import { ecSpki, rsaSpki } from './public-key';
import type { Pkcs11Uri } from './uri';

const ABSENT = new Set([pkcs11js.CKR_ATTRIBUTE_TYPE_INVALID, pkcs11js.CKR_ATTRIBUTE_SENSITIVE]);

/** A private key object found on the token, with its public half read from the token. */
export interface FoundKey {
  /** CKA_LABEL, else `id-<hex CKA_ID>`. */
  readonly name: string;
  readonly id: Buffer;
  readonly object: pkcs11js.Handle;
  readonly publicKey: PublicKeyInfo;
}

/**
 * Reads objects through one logged-in session. Synchronous pkcs11js calls: this runs at
 * open() and during recovery, never per request.
 */
export class TokenObjects {
  constructor(
    private readonly module: pkcs11js.PKCS11,
    private readonly session: pkcs11js.Handle,
  ) {}

  /** The private keys the URI selects: by label and/or id, every one when it names neither. */
  privateKeys(uri: Pkcs11Uri, where: string): { found: FoundKey[]; skipped: SkippedKey[] } {
    const vendor = Object.keys(uri.vendor);
    if (vendor.length > 0) return { found: [], skipped: [{ source: where, reason: `the URI's attributes ${vendor.join(', ')} are unknown to keylessd, so it matches no object` }] };
    if (uri.type !== undefined && uri.type !== 'private') return { found: [], skipped: [{ source: where, reason: `keylessd serves private keys; the URI names type=${uri.type}` }] };
    const template: pkcs11js.Template = [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }];
    if (uri.object !== undefined) template.push({ type: pkcs11js.CKA_LABEL, value: uri.object });
    if (uri.id !== undefined) template.push({ type: pkcs11js.CKA_ID, value: uri.id });
    const found: FoundKey[] = [];
    const skipped: SkippedKey[] = [];
    for (const object of this.find(template)) {
      const a = this.attributes(object, [pkcs11js.CKA_LABEL, pkcs11js.CKA_ID, pkcs11js.CKA_KEY_TYPE]);
      const id = a.get(pkcs11js.CKA_ID) ?? Buffer.alloc(0);
      const name = a.get(pkcs11js.CKA_LABEL)?.toString('utf8') || `id-${id.toString('hex')}`;
      try {
        const keyType = a.has(pkcs11js.CKA_KEY_TYPE) ? Number(a.get(pkcs11js.CKA_KEY_TYPE)!.readBigUInt64LE(0)) : -1;
        found.push({ name, id, object, publicKey: describePublicKey(this.spkiOf(object, keyType, id)) });
      } catch (err) {
        if (ckrCode(err) !== undefined) throw err; // the token failed, not this key
        skipped.push({ source: `${where};object=${name}`, reason: (err as Error).message });
      }
    }
    if (found.length === 0 && skipped.length === 0) skipped.push({ source: where, reason: 'no private key on the token matches the URI' });
    return { found, skipped };
  }

  /**
   * The DER SPKI of a private key: RSA from the private object's own modulus and exponent;
   * otherwise (EC, Ed25519, or an RSA object that hides them) from the public key object,
   * else the certificate, with the same CKA_ID.
   */
  private spkiOf(object: pkcs11js.Handle, keyType: number, id: Buffer): Buffer {
    if (keyType === pkcs11js.CKK_RSA) {
      const a = this.attributes(object, [pkcs11js.CKA_MODULUS, pkcs11js.CKA_PUBLIC_EXPONENT]);
      if (a.has(pkcs11js.CKA_MODULUS) && a.has(pkcs11js.CKA_PUBLIC_EXPONENT)) return rsaSpki(a.get(pkcs11js.CKA_MODULUS)!, a.get(pkcs11js.CKA_PUBLIC_EXPONENT)!);
    }
    const [publicKey] = this.find([{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY }, { type: pkcs11js.CKA_ID, value: id }]);
    if (publicKey) {
      const a = this.attributes(publicKey, [pkcs11js.CKA_MODULUS, pkcs11js.CKA_PUBLIC_EXPONENT, pkcs11js.CKA_EC_PARAMS, pkcs11js.CKA_EC_POINT]);
      if (a.has(pkcs11js.CKA_EC_PARAMS) && a.has(pkcs11js.CKA_EC_POINT)) return ecSpki(a.get(pkcs11js.CKA_EC_PARAMS)!, a.get(pkcs11js.CKA_EC_POINT)!);
      if (a.has(pkcs11js.CKA_MODULUS) && a.has(pkcs11js.CKA_PUBLIC_EXPONENT)) return rsaSpki(a.get(pkcs11js.CKA_MODULUS)!, a.get(pkcs11js.CKA_PUBLIC_EXPONENT)!);
    }
    const [certificate] = this.find([{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_CERTIFICATE }, { type: pkcs11js.CKA_ID, value: id }]);
    const der = certificate && this.attributes(certificate, [pkcs11js.CKA_VALUE]).get(pkcs11js.CKA_VALUE);
    if (der) return new X509Certificate(der).publicKey.export({ format: 'der', type: 'spki' });
    throw new Error('its public half is not on the token (no public key or certificate object with the same CKA_ID)');
  }

  private find(template: pkcs11js.Template): pkcs11js.Handle[] {
    this.module.C_FindObjectsInit(this.session, template);
    try {
      return this.module.C_FindObjects(this.session, 10_000);
    } finally {
      this.module.C_FindObjectsFinal(this.session);
    }
  }

  /** One attribute per call: a token refuses the whole template when one attribute is absent or sensitive. */
  private attributes(object: pkcs11js.Handle, types: number[]): Map<number, Buffer> {
    const result = new Map<number, Buffer>();
    for (const type of types) {
      try {
        const [attribute] = this.module.C_GetAttributeValue(this.session, object, [{ type }]);
        if (Buffer.isBuffer(attribute?.value) && attribute.value.length > 0) result.set(type, attribute.value);
      } catch (err) {
        // Absent or sensitive: the caller decides whether it needed it. Anything else (the
        // session went away) must reach recovery, not pass for a missing attribute.
        if (!ABSENT.has(ckrCode(err)!)) throw err;
      }
    }
    return result;
  }
}
