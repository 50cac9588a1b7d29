/**
 * keyless.v1 codec: bytes in, typed messages out, and back. No I/O, so the server, the
 * client and the fuzz tests share it. The message classes come from proto/keyless.proto.
 */
import Long from 'long';
import { keyless } from '../../gen/keyless';
import { SIGNATURE_ALGORITHMS, type DecryptPadding, type SignatureAlgorithm } from '../../core/crypto/algorithms';
import { BadRequestError, ERROR_CODES, InvalidArgumentError, type ErrorCode } from '../../errors';
import type { KeyRef } from '../../core/keys/registry';

/** The WebSocket subprotocol a keyless.v1 client offers and the server requires: defined here only. */
export const SUBPROTOCOL = 'keyless.v1';

export const pb = keyless.v1;
export type RequestMessage = keyless.v1.Request;
export type ResponseMessage = keyless.v1.Response;
export type KeyInfoMessage = keyless.v1.KeyInfo.$Properties;
export type RequestId = number | Long;

/** Throws (protobufjs errors) when the bytes are not a Request; the caller closes the session. */
export function decodeRequest(bytes: Uint8Array): RequestMessage {
  return pb.Request.decode(bytes);
}

export function decodeResponse(bytes: Uint8Array): ResponseMessage {
  return pb.Response.decode(bytes);
}

export function encodeRequest(request: keyless.v1.Request.$Properties): Uint8Array {
  return pb.Request.encode(request).finish();
}

export function encodeResponse(response: keyless.v1.Response.$Properties): Uint8Array {
  return pb.Response.encode(response).finish();
}

/** Response fields that carry one `bytes` value: a signature (3) or a plaintext (4). */
export const ResponseBytesField = { signature: 3, plaintext: 4 } as const;

/**
 * The answer to nearly every request, a Response with `id` and one bytes field, written
 * straight into one buffer instead of through protobufjs's writer (which builds a list of
 * operations and allocates per field). Byte for byte what encodeResponse writes for the
 * same message (test/protocol/v1-fast-encode.test.ts): field 1 as a varint, omitted when 0,
 * then the tag, the length and the bytes.
 */
export function encodeBytesResponse(id: RequestId | null | undefined, field: 3 | 4, bytes: Uint8Array): Buffer {
  let low = 0;
  let high = 0;
  if (typeof id === 'number') {
    if (!Number.isSafeInteger(id) || id < 0) return Buffer.from(encodeResponse({ id, [field === 3 ? 'signature' : 'plaintext']: bytes }));
    low = id >>> 0;
    high = Math.floor(id / 0x100000000) >>> 0;
  } else if (id) {
    low = id.low >>> 0;
    high = id.high >>> 0;
  }
  const idBytes = low === 0 && high === 0 ? 0 : 1 + varint64Length(low, high);
  const lengthBytes = varintLength(bytes.length);
  const out = Buffer.allocUnsafe(idBytes + 1 + lengthBytes + bytes.length);
  let at = 0;
  if (idBytes > 0) {
    out[at++] = 0x08;
    // 64-bit varint from two 32-bit halves: 7 bits at a time, low bits first.
    while (high !== 0 || low > 0x7f) {
      out[at++] = (low & 0x7f) | 0x80;
      low = ((low >>> 7) | (high << 25)) >>> 0;
      high >>>= 7;
    }
    out[at++] = low;
  }
  out[at++] = (field << 3) | 2;
  let length = bytes.length;
  while (length > 0x7f) {
    out[at++] = (length & 0x7f) | 0x80;
    length >>>= 7;
  }
  out[at++] = length;
  out.set(bytes, at);
  return out;
}

function varintLength(value: number): number {
  let n = 1;
  while (value > 0x7f) {
    value >>>= 7;
    n += 1;
  }
  return n;
}

function varint64Length(low: number, high: number): number {
  let n = 1;
  while (high !== 0 || low > 0x7f) {
    low = ((low >>> 7) | (high << 25)) >>> 0;
    high >>>= 7;
    n += 1;
  }
  return n;
}

/** keyless.v1's one table from the core's error codes to the wire's ErrorCode enum (proto/keyless.proto). */
export const V1_ERROR_CODE: Readonly<Record<ErrorCode, keyless.v1.ErrorCode>> = {
  BAD_REQUEST: pb.ErrorCode.BAD_REQUEST,
  KEY_NOT_FOUND: pb.ErrorCode.KEY_NOT_FOUND,
  FORBIDDEN: pb.ErrorCode.FORBIDDEN,
  UNSUPPORTED: pb.ErrorCode.UNSUPPORTED,
  CRYPTO_FAILURE: pb.ErrorCode.CRYPTO_FAILURE,
  BACKEND_UNAVAILABLE: pb.ErrorCode.BACKEND_UNAVAILABLE,
  OVERLOADED: pb.ErrorCode.OVERLOADED,
  TIMEOUT: pb.ErrorCode.TIMEOUT,
  INTERNAL: pb.ErrorCode.INTERNAL,
};
const CODE_OF_WIRE = new Map<number, ErrorCode>(ERROR_CODES.map((code) => [V1_ERROR_CODE[code], code]));

export function errorResponse(id: RequestId | null | undefined, code: ErrorCode, message: string): Uint8Array {
  return encodeResponse({ id: id ?? 0, error: { code: V1_ERROR_CODE[code], message } });
}

/** The core's code for a wire ErrorCode; ERROR_CODE_UNSPECIFIED for 0 and values this build does not know. */
export function errorCodeName(code: number | null | undefined): ErrorCode | 'ERROR_CODE_UNSPECIFIED' {
  return (code ? CODE_OF_WIRE.get(code) : undefined) ?? 'ERROR_CODE_UNSPECIFIED';
}

/** The request id as a JS number when it fits, else its decimal string (for logs and the audit trail). */
export function requestIdText(id: RequestId | null | undefined): string {
  if (id === null || id === undefined) return '0';
  return typeof id === 'number' ? String(id) : id.toString();
}

export function keyRefFromMessage(ref: keyless.v1.KeyRef.$Properties | null | undefined): KeyRef {
  if (!ref) throw new BadRequestError('the request names no key (`key` is missing)');
  if (ref.ski != null && ref.ski.length > 0) {
    if (ref.ski.length !== 20) throw new BadRequestError(`key.ski must be 20 bytes, got ${ref.ski.length}`);
    return { ski: Buffer.from(ref.ski) };
  }
  if (ref.spkiSha256 != null && ref.spkiSha256.length > 0) {
    if (ref.spkiSha256.length !== 32) throw new BadRequestError(`key.spki_sha256 must be 32 bytes, got ${ref.spkiSha256.length}`);
    return { spkiSha256: Buffer.from(ref.spkiSha256) };
  }
  if (ref.name) return { name: ref.name };
  throw new BadRequestError('key must set one of ski, spki_sha256 or name');
}

export function keyRefToMessage(ref: KeyRef): keyless.v1.KeyRef.$Properties {
  if ('name' in ref) return { name: ref.name };
  if ('ski' in ref) return { ski: ref.ski };
  if ('index' in ref) throw new InvalidArgumentError(`keyless.v1 cannot name a key by ${ref.index.description}`);
  return { spkiSha256: ref.spkiSha256 };
}

export function signatureAlgorithmFromMessage(value: number | null | undefined): SignatureAlgorithm {
  const name = value ? SIGNATURE_ALGORITHMS[value - 1] : undefined;
  if (!name) throw new BadRequestError(value ? `unknown signature algorithm ${value}` : 'algorithm is missing (SIGNATURE_ALGORITHM_UNSPECIFIED)');
  return name;
}

export function signatureAlgorithmNumber(name: SignatureAlgorithm): number {
  return SIGNATURE_ALGORITHMS.indexOf(name) + 1;
}

export function decryptPaddingFromMessage(value: number | null | undefined): DecryptPadding {
  if (value === pb.DecryptPadding.RSA_RAW) return 'rsa-raw';
  if (value === pb.DecryptPadding.RSA_OAEP_SHA256) return 'rsa-oaep-sha256';
  throw new BadRequestError(value ? `unknown decrypt padding ${value}` : 'padding is missing (DECRYPT_PADDING_UNSPECIFIED)');
}
