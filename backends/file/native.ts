import { join } from 'node:path';
import { InstallationError } from '../../src/errors';
import { packageRoot } from '../../src/util/package-root';

/** Operation and hash numbers shared with openssl_keys.c. */
export const NativeOp = { rsaPkcs1: 0, rsaPss: 1, ecdsa: 2, ed25519: 3, decryptRaw: 4, decryptOaepSha256: 5 } as const;
export const NativeHash = { none: 0, sha1: 1, sha224: 2, sha256: 3, sha384: 4, sha512: 5 } as const;

export type NativeKey = { readonly __nativeKey: unique symbol };

interface NativeAddon {
  loadKey(pkcs8Der: Buffer): NativeKey;
  run(key: NativeKey, op: number, hash: number, input: Buffer): Promise<Buffer>;
}

let addon: NativeAddon | undefined;

/** The OpenSSL addon built by `npm ci` (binding.gyp); loaded on first use. */
export function nativeAddon(): NativeAddon {
  if (!addon) {
    const path = join(packageRoot(), 'build', 'Release', 'keyless_openssl.node');
    try {
      addon = require(path) as NativeAddon;
    } catch (err) {
      throw new InstallationError(`cannot load the native signer ${path} (run \`npm ci\` or \`npm run build:native\`): ${(err as Error).message}`, { cause: err });
    }
  }
  return addon;
}
