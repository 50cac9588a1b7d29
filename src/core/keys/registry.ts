import type { PublicKeyInfo } from '../crypto/keyid';
import type { KeyHandle, SkippedKey } from './types';

/**
 * A way to find keys that some protocol needs and the core does not know about (the compat
 * port's certificate digest is one: src/protocols/compat/key-index.ts). The protocol defines it; the
 * registry builds it with the others when it is built, so a lookup is one map access.
 */
export interface KeyIndex {
  /** Names the index in messages: "no key with <description> <hex>". */
  readonly description: string;
  /** The key's value in this index, or undefined when the key has none (wrong type). */
  valueOf(publicKey: PublicKeyInfo): Buffer | undefined;
}

/** How a request names a key: by the core's own identifiers, or through a protocol's KeyIndex. */
export type KeyRef =
  | { readonly ski: Buffer }
  | { readonly spkiSha256: Buffer }
  | { readonly name: string }
  | { readonly index: KeyIndex; readonly value: Buffer };

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
  private readonly byIndex = new Map<KeyIndex, Map<string, RegisteredKey>>();
  readonly skipped: SkippedKey[] = [];
  /**
   * Requests that looked a key up here and have not finished. After a reload swaps in a
   * new registry, the old backends are closed only once this reaches zero.
   */
  inflight = 0;

  /** `indexes`: the extra key-lookup indexes the protocols being served register (see KeyIndex). */
  constructor(handles: readonly KeyHandle[], optionsFor: (name: string) => KeyOptions, indexes: readonly KeyIndex[] = []) {
    for (const index of indexes) this.byIndex.set(index, new Map());
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
      for (const [index, map] of this.byIndex) {
        const value = index.valueOf(handle.publicKey);
        if (value) map.set(value.toString('hex'), entry);
      }
    }
  }

  find(ref: KeyRef): RegisteredKey | undefined {
    if ('name' in ref) return this.byName.get(ref.name);
    if ('ski' in ref) return this.bySki.get(ref.ski.toString('hex'));
    if ('index' in ref) return this.byIndex.get(ref.index)?.get(ref.value.toString('hex'));
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
  if ('index' in ref) return `${ref.index.description} ${ref.value.toString('hex')}`;
  return `SPKI SHA-256 ${ref.spkiSha256.toString('hex')}`;
}
