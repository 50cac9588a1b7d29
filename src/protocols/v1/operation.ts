import { SCHEME_OF, type DecryptPadding, type SignatureAlgorithm, type SignScheme } from '../../core/crypto/algorithms';
import { BadRequestError } from '../../errors';
import type { KeyRef } from '../../core/keys/registry';
import type { RequestFacts } from '../../core/request';
import { boundedText, FIELD_LIMITS } from '../../util/bounded-text';
import { ipFromBytes } from '../../util/ip';
import { decryptPaddingFromMessage, keyRefFromMessage, signatureAlgorithmFromMessage, type RequestMessage } from './codec';

/** What a decoded keyless.v1 Request asks for, validated: the only shape the server acts on. */
export type V1Operation =
  | { readonly kind: 'ping'; readonly payload: Uint8Array }
  | {
      readonly kind: 'sign';
      readonly key: KeyRef;
      readonly algorithm: SignatureAlgorithm;
      readonly scheme: SignScheme;
      readonly input: { readonly digest: Buffer } | { readonly message: Buffer };
    }
  | { readonly kind: 'decrypt'; readonly key: KeyRef; readonly padding: DecryptPadding; readonly ciphertext: Buffer }
  | { readonly kind: 'listKeys' }
  | { readonly kind: 'getKey'; readonly key: KeyRef };

/** Throws BadRequestError naming the problem; pure, so it can be fuzzed. */
export function interpretRequest(request: RequestMessage): V1Operation {
  switch (request.op) {
    case 'ping':
      return { kind: 'ping', payload: request.ping!.payload ?? new Uint8Array() };
    case 'sign': {
      const sign = request.sign!;
      const algorithm = signatureAlgorithmFromMessage(sign.algorithm);
      const key = keyRefFromMessage(sign.key);
      if (sign.input === 'digest') return { kind: 'sign', key, algorithm, scheme: SCHEME_OF[algorithm], input: { digest: Buffer.from(sign.digest!) } };
      if (sign.input === 'message') return { kind: 'sign', key, algorithm, scheme: SCHEME_OF[algorithm], input: { message: Buffer.from(sign.message!) } };
      throw new BadRequestError('sign needs `digest` or `message`');
    }
    case 'decrypt': {
      const decrypt = request.decrypt!;
      return { kind: 'decrypt', key: keyRefFromMessage(decrypt.key), padding: decryptPaddingFromMessage(decrypt.padding), ciphertext: Buffer.from(decrypt.ciphertext ?? []) };
    }
    case 'listKeys':
      return { kind: 'listKeys' };
    case 'getKey':
      return { kind: 'getKey', key: keyRefFromMessage(request.getKey!.key) };
    default:
      throw new BadRequestError('the request carries no operation');
  }
}

/**
 * The Request's context as the core's RequestFacts (keyless.v1 carries no compliance region).
 * Throws BadRequestError for an address of the wrong length, as the compat port does; texts are bounded.
 */
export function requestContext(request: RequestMessage): RequestFacts | undefined {
  const context = request.context;
  if (!context) return undefined;
  return {
    sni: context.sni ? boundedText(context.sni, FIELD_LIMITS.sni) : undefined,
    clientIp: address(context.clientIp, 'context.client_ip'),
    serverIp: address(context.serverIp, 'context.server_ip'),
    requestId: context.requestId ? boundedText(context.requestId, FIELD_LIMITS.requestId) : undefined,
  };
}

function address(bytes: Uint8Array | null | undefined, field: string): string | undefined {
  if (!bytes || bytes.length === 0) return undefined;
  if (bytes.length !== 4 && bytes.length !== 16) throw new BadRequestError(`${field} must be 4 (IPv4) or 16 (IPv6) bytes, got ${bytes.length}`);
  return ipFromBytes(bytes);
}
