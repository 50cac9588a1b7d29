import { certificateDigest } from '../compat/request';
import type { KeyHandle, SkippedKey } from './types';

export type KeyRef =
  | { readonly ski: Buffer }
  | { readonly spkiSha256: Buffer }
  | { readonly name: string }
  /** The Cloudflare protocol's certificate digest (RSA keys only); see src/compat/request.ts. */
  | { readonly certDigest: Buffer };

export interface KeyOptions {
  /** RSA-OAEP decryption is off unless the key's config enables it (`decrypt`). */
  readonly decryptAllowed: boolean;
  /** Raw RSA decryption (TLS 1.2 RSA key exchange) is a signing oracle: off unless the key's config enables it (`decrypt_raw`). */
  readonly rawDecryptAllowed: boolean;
}

export interface RegisteredKey extends KeyOptions {
  readonly handle: KeyHandle;
}

/**
 * The keys being served, indexed every way a client can name one. Immutable: a reload
 * builds a new registry and swaps it in, so a request sees one consistent set.
 */
export class KeyRegistry {
  private readonly byName = new Map<string, RegisteredKey>();
  private readonly bySki = new Map<string, RegisteredKey>();
  private readonly bySpki = new Map<string, RegisteredKey>();
  private readonly byCertDigest = new Map<string, RegisteredKey>();
  readonly skipped: SkippedKey[] = [];
  /**
   * Requests that looked a key up here and have not finished. After a reload swaps in a
   * new registry, the old backends are closed only once this reaches zero.
   */
  inflight = 0;

  constructor(handles: readonly KeyHandle[], optionsFor: (name: string) => KeyOptions) {
    for (const handle of handles) {
      const ski = handle.publicKey.ski.toString('hex');
      const clash = this.byName.get(handle.name) ?? this.bySki.get(ski);
      if (clash) {
        // The first configured backend wins; the same key in two stores is served once.
        const what = clash.handle.name === handle.name ? `the name ${handle.name}` : `SKI ${ski}`;
        this.skipped.push({ source: `${handle.backend.name}/${handle.name}`, reason: `${what} is already served by backend ${clash.handle.backend.name}` });
        continue;
      }
      const entry: RegisteredKey = { handle, ...optionsFor(handle.name) };
      this.byName.set(handle.name, entry);
      this.bySki.set(ski, entry);
      this.bySpki.set(handle.publicKey.spkiSha256.toString('hex'), entry);
      if (handle.publicKey.modulus) this.byCertDigest.set(certificateDigest(handle.publicKey.modulus).toString('hex'), entry);
    }
  }

  find(ref: KeyRef): RegisteredKey | undefined {
    if ('name' in ref) return this.byName.get(ref.name);
    if ('ski' in ref) return this.bySki.get(ref.ski.toString('hex'));
    if ('certDigest' in ref) return this.byCertDigest.get(ref.certDigest.toString('hex'));
    return this.bySpki.get(ref.spkiSha256.toString('hex'));
  }

  list(): RegisteredKey[] {
    return [...this.byName.values()];
  }

  get size(): number {
    return this.byName.size;
  }
}

export function describeKeyRef(ref: KeyRef): string {
  if ('name' in ref) return `name "${ref.name}"`;
  if ('ski' in ref) return `SKI ${ref.ski.toString('hex')}`;
  if ('certDigest' in ref) return `certificate digest ${ref.certDigest.toString('hex')}`;
  return `SPKI SHA-256 ${ref.spkiSha256.toString('hex')}`;
}
