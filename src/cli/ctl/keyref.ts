import type { KeyRef } from '../../core/keys/registry';

/** 40 hex digits name a key by SKI, 64 by SPKI SHA-256; anything else is a key name. */
export function parseKeyRef(text: string): KeyRef {
  const hex = text.replace(/:/g, '');
  if (/^[0-9a-fA-F]{40}$/.test(hex)) return { ski: Buffer.from(hex, 'hex') };
  if (/^[0-9a-fA-F]{64}$/.test(hex)) return { spkiSha256: Buffer.from(hex, 'hex') };
  return { name: text };
}
