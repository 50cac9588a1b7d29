import { X509Certificate } from 'node:crypto';
import * as pkcs11js from 'pkcs11js';
import { describePublicKey, type PublicKeyInfo } from '../../src/core/crypto/keyid';
import type { SkippedKey } from '../../src/core/keys/types';
import { KeyFormatError } from '../../src/errors';
import { FIND_BATCH, type SharedModule } from './module';
import { ecSpki, rsaSpki } from './public-key';
import type { Pkcs11Uri } from './uri';

/** A private key object found on the token, with its public half read from the token. */
export interface FoundKey {
  /** CKA_LABEL, else `id-<hex CKA_ID>`; key_names in the config may rename it. */
  readonly name: string;
  readonly id: Buffer;
  readonly object: pkcs11js.Handle;
  readonly publicKey: PublicKeyInfo;
}

/** Up to this many keys needing their public object, one search each; beyond it one search for all. */
const TARGETED_SEARCHES = 4;
/** How long building public keys may hold the event loop before it yields a turn. */
const SLICE_MS = 5;

const turn = () => new Promise((resolve) => setImmediate(resolve));
const hex = (id: Buffer) => id.toString('hex');

interface Candidate {
  readonly object: pkcs11js.Handle;
  readonly name: string;
  readonly id: Buffer;
  readonly keyType: number;
  /** DER SPKI, or the attributes it is built from. */
  rsa?: { modulus: Buffer; exponent: Buffer };
  ec?: { params: Buffer; point: Buffer };
  certificate?: Buffer;
}

/**
 * Reads the keys through one logged-in session. Every blocking call (C_FindObjects,
 * C_GetAttributeValue) runs on the module's worker thread, in a few batches for the whole
 * token rather than a search per key; the event loop only builds the public keys, a few
 * dozen between two turns.
 */
export class TokenObjects {
  constructor(
    private readonly shared: SharedModule,
    private readonly session: pkcs11js.Handle,
    private readonly batch = FIND_BATCH,
    private readonly targetedSearches = TARGETED_SEARCHES,
  ) {}

  /** The private keys the URI selects: by label and/or id, every one when it names neither. */
  async privateKeys(uri: Pkcs11Uri, where: string): Promise<{ found: FoundKey[]; skipped: SkippedKey[] }> {
    const vendor = Object.keys(uri.vendor);
    if (vendor.length > 0) return { found: [], skipped: [{ source: where, reason: `the URI's attributes ${vendor.join(', ')} are unknown to keylessd, so it matches no object` }] };
    if (uri.type !== undefined && uri.type !== 'private') return { found: [], skipped: [{ source: where, reason: `keylessd serves private keys; the URI names type=${uri.type}` }] };
    const template: pkcs11js.Template = [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }];
    if (uri.object !== undefined) template.push({ type: pkcs11js.CKA_LABEL, value: uri.object });
    if (uri.id !== undefined) template.push({ type: pkcs11js.CKA_ID, value: uri.id });

    const objects = await this.shared.find(this.session, template, this.batch);
    const values = await this.shared.attributes(this.session, objects, [pkcs11js.CKA_LABEL, pkcs11js.CKA_ID, pkcs11js.CKA_KEY_TYPE]);
    const candidates: Candidate[] = objects.map((object, i) => {
      const [label, id = Buffer.alloc(0), keyType] = values[i]!.map((v) => v ?? undefined);
      return { object, id, name: label?.toString('utf8') || `id-${hex(id)}`, keyType: keyType ? Number(keyType.readBigUInt64LE(0)) : -1 };
    });
    // RSA: the modulus and exponent from the private object itself, where the token shows them.
    const rsa = candidates.filter((c) => c.keyType === pkcs11js.CKK_RSA);
    const rsaValues = await this.shared.attributes(this.session, rsa.map((c) => c.object), [pkcs11js.CKA_MODULUS, pkcs11js.CKA_PUBLIC_EXPONENT]);
    rsa.forEach((c, i) => {
      const [modulus, exponent] = rsaValues[i]!;
      if (modulus && exponent) c.rsa = { modulus, exponent };
    });

    // The public half of keys whose private object does not give it: the public key object
    // with the same CKA_ID, else the certificate with that CKA_ID.
    await this.fillFrom(candidates, pkcs11js.CKO_PUBLIC_KEY, (c) => (c.keyType === pkcs11js.CKK_RSA ? [pkcs11js.CKA_MODULUS, pkcs11js.CKA_PUBLIC_EXPONENT] : [pkcs11js.CKA_EC_PARAMS, pkcs11js.CKA_EC_POINT]), (c, [a, b]) => {
      if (!a || !b) return;
      if (c.keyType === pkcs11js.CKK_RSA) c.rsa = { modulus: a, exponent: b };
      else c.ec = { params: a, point: b };
    });
    await this.fillFrom(candidates, pkcs11js.CKO_CERTIFICATE, () => [pkcs11js.CKA_VALUE], (c, [der]) => {
      if (der) c.certificate = der;
    });

    const found: FoundKey[] = [];
    const skipped: SkippedKey[] = [];
    let sliceStart = Date.now();
    for (const c of candidates) {
      if (Date.now() - sliceStart >= SLICE_MS) {
        await turn();
        sliceStart = Date.now();
      }
      try {
        found.push({ name: c.name, id: c.id, object: c.object, publicKey: describePublicKey(spkiOf(c)) });
      } catch (err) {
        skipped.push({ source: `${where};object=${c.name}`, reason: (err as Error).message });
      }
    }
    if (found.length === 0 && skipped.length === 0) skipped.push({ source: where, reason: 'no private key on the token matches the URI' });
    return { found, skipped };
  }

  /**
   * Reads `typesOf(candidate)` of the object of `objectClass` with the candidate's CKA_ID,
   * for each candidate still lacking its public half: a search per key for a few, else one
   * search per key type for every object of the class, reading the id and the attributes
   * in one template per object.
   */
  private async fillFrom(candidates: Candidate[], objectClass: number, typesOf: (c: Candidate) => number[], fill: (c: Candidate, values: Array<Buffer | null>) => void): Promise<void> {
    const missing = candidates.filter((c) => !c.rsa && !c.ec && !c.certificate);
    if (missing.length === 0) return;
    if (missing.length <= this.targetedSearches) {
      for (const c of missing) {
        const [object] = await this.shared.find(this.session, [{ type: pkcs11js.CKA_CLASS, value: objectClass }, { type: pkcs11js.CKA_ID, value: c.id }], this.batch);
        if (object) fill(c, (await this.shared.attributes(this.session, [object], typesOf(c)))[0]!);
      }
      return;
    }
    // Certificates have no key type: one group. Public keys: one search per key type, so
    // that every object of a search has the attributes asked for.
    const groups = new Map<number, Candidate[]>();
    for (const c of missing) {
      const key = objectClass === pkcs11js.CKO_CERTIFICATE || c.keyType < 0 ? -1 : c.keyType;
      const group = groups.get(key);
      if (group) group.push(c);
      else groups.set(key, [c]);
    }
    for (const [keyType, members] of groups) {
      const template: pkcs11js.Template = [{ type: pkcs11js.CKA_CLASS, value: objectClass }];
      if (keyType !== -1) template.push({ type: pkcs11js.CKA_KEY_TYPE, value: keyType });
      const objects = await this.shared.find(this.session, template, this.batch);
      const values = await this.shared.attributes(this.session, objects, [pkcs11js.CKA_ID, ...typesOf(members[0]!)]);
      const byId = new Map<string, Array<Buffer | null>>();
      for (const [id, ...rest] of values) {
        const key = id ? hex(id) : '';
        if (!byId.has(key)) byId.set(key, rest);
      }
      for (const c of members) {
        const found = byId.get(hex(c.id));
        if (found) fill(c, found);
      }
    }
  }
}

/**
 * The DER SPKI of a private key: RSA from the private object's own modulus and exponent;
 * otherwise (EC, Ed25519, or an RSA object that hides them) from the public key object,
 * else the certificate, with the same CKA_ID.
 */
function spkiOf(c: Candidate): Buffer {
  if (c.ec) return ecSpki(c.ec.params, c.ec.point);
  if (c.rsa) return rsaSpki(c.rsa.modulus, c.rsa.exponent);
  if (c.certificate) return new X509Certificate(c.certificate).publicKey.export({ format: 'der', type: 'spki' });
  throw new KeyFormatError('its public half is not on the token (no public key or certificate object with the same CKA_ID)');
}
