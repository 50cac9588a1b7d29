import { SIGNATURE_ALGORITHMS, algorithmFor, isSignatureAlgorithm, type AlgorithmName, type SignatureAlgorithm, type SignScheme } from '../../core/crypto/algorithms';
import type { HashName } from '../../core/crypto/hashes';
import { InvalidArgumentError, type ErrorCode } from '../../errors';
import type { RequestFacts } from '../../core/request';
import { boundedText, FIELD_LIMITS } from '../../util/bounded-text';
import { ipFromBytes } from '../../util/ip';
import { CompatFormatError, ErrorByte, Tag, type Frame } from './codec';

export const Opcode = { rsaDecrypt: 0x01, ping: 0xf1, response: 0xf0, pong: 0xf2, error: 0xff } as const;

const HASHES: readonly HashName[] = ['md5-sha1', 'sha1', 'sha224', 'sha256', 'sha384', 'sha512'];

/** Sign opcodes (COMPAT.md) → what to sign with, and its algorithm name (metrics, policy, audit). */
const SIGN_OPCODES = new Map<number, { scheme: SignScheme; algorithm: AlgorithmName }>(
  [
    ...HASHES.map((hash, i): [number, SignScheme] => [0x02 + i, { kind: 'rsa-pkcs1', hash }]),
    ...HASHES.map((hash, i): [number, SignScheme] => [0x12 + i, { kind: 'ecdsa', hash }]),
    ...(['sha256', 'sha384', 'sha512'] as const).map((hash, i): [number, SignScheme] => [0x35 + i, { kind: 'rsa-pss', hash }]),
    [0x18, { kind: 'ed25519' }] as [number, SignScheme],
  ].map(([opcode, scheme]) => [opcode, { scheme, algorithm: algorithmFor(scheme) }]),
);

/** keyless.v1 algorithm names → the sign opcode that asks for the same signature (keylessctl's --protocol cloudflare). */
export const SIGN_OPCODE: Readonly<Record<SignatureAlgorithm, number>> = (() => {
  const table: Partial<Record<SignatureAlgorithm, number>> = {};
  for (const [opcode, { algorithm }] of SIGN_OPCODES) {
    if (isSignatureAlgorithm(algorithm)) table[algorithm] = opcode;
  }
  for (const name of SIGNATURE_ALGORITHMS) if (table[name] === undefined) throw new InvalidArgumentError(`no compat sign opcode for ${name}`);
  return table as Record<SignatureAlgorithm, number>;
})();

/** Seal, unseal, RPC, custom: defined by the protocol, not offered here. */
const NOT_OFFERED = new Set([0x21, 0x22, 0x23, 0x24]);
/** Opcodes only a server sends. */
const SERVER_ONLY = new Set<number>([Opcode.response, Opcode.pong, Opcode.error]);

export type CompatOperation =
  | { readonly kind: 'ping'; readonly payload: Buffer }
  | { readonly kind: 'sign'; readonly scheme: SignScheme; readonly algorithm: AlgorithmName; readonly payload: Buffer }
  | { readonly kind: 'decrypt'; readonly payload: Buffer };

export interface CompatRequest {
  readonly id: number;
  readonly operation: CompatOperation;
  readonly ski?: Buffer;
  readonly certDigest?: Buffer;
  readonly facts: RequestFacts;
}

function fixedLength(frame: Frame, tag: number, lengths: readonly number[], what: string): Buffer | undefined {
  const value = frame.items.get(tag);
  if (value === undefined) return undefined;
  if (!lengths.includes(value.length)) throw new CompatFormatError(frame.id, ErrorByte.format, `${what} must be ${lengths.join(' or ')} bytes, got ${value.length}`);
  return value;
}

function requestId(frame: Frame): string | undefined {
  const json = frame.items.get(Tag.requestContext);
  if (!json) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(json.toString('utf8'));
  } catch {
    throw new CompatFormatError(frame.id, ErrorByte.format, 'request context (0x16) is not JSON');
  }
  const id = (parsed as { request_id?: unknown } | null)?.request_id;
  const text = typeof id === 'string' ? id : typeof id === 'number' ? String(id) : undefined;
  return text === undefined ? undefined : boundedText(text, FIELD_LIMITS.requestId);
}

/** What a decoded frame asks for. Throws CompatFormatError with the error byte to answer. */
export function interpretFrame(frame: Frame): CompatRequest {
  const opcodeItem = frame.items.get(Tag.opcode);
  if (!opcodeItem) throw new CompatFormatError(frame.id, ErrorByte.format, 'the request has no opcode item (0x11)');
  if (opcodeItem.length !== 1) throw new CompatFormatError(frame.id, ErrorByte.format, `the opcode item must be 1 byte, got ${opcodeItem.length}`);
  const opcode = opcodeItem[0]!;
  const payload = frame.items.get(Tag.payload) ?? Buffer.alloc(0);
  let operation: CompatOperation;
  const sign = SIGN_OPCODES.get(opcode);
  if (sign) operation = { kind: 'sign', ...sign, payload };
  else if (opcode === Opcode.rsaDecrypt) operation = { kind: 'decrypt', payload };
  else if (opcode === Opcode.ping) operation = { kind: 'ping', payload };
  else if (SERVER_ONLY.has(opcode)) throw new CompatFormatError(frame.id, ErrorByte.unexpectedOpcode, `opcode 0x${opcode.toString(16)} is sent by servers, not clients`);
  else if (NOT_OFFERED.has(opcode)) throw new CompatFormatError(frame.id, ErrorByte.badOpcode, `opcode 0x${opcode.toString(16)} (seal/unseal/RPC/custom) is not offered`);
  else throw new CompatFormatError(frame.id, ErrorByte.badOpcode, `unknown opcode 0x${opcode.toString(16)}`);

  const region = fixedLength(frame, Tag.complianceRegion, [1], 'compliance region (0x17)');
  const sni = frame.items.get(Tag.sni);
  return {
    id: frame.id,
    operation,
    ski: fixedLength(frame, Tag.ski, [20], 'SKI (0x04)'),
    certDigest: fixedLength(frame, Tag.certDigest, [32], 'certificate digest (0x01)'),
    facts: {
      sni: sni && sni.length > 0 ? boundedText(sni.toString('utf8'), FIELD_LIMITS.sni) : undefined,
      clientIp: ipFromBytes(fixedLength(frame, Tag.clientIp, [4, 16], 'client IP (0x03)')),
      serverIp: ipFromBytes(fixedLength(frame, Tag.serverIp, [4, 16], 'server IP (0x05)')),
      requestId: requestId(frame),
      complianceRegion: region?.[0],
    },
  };
}

/**
 * The error byte for a dispatcher error. A policy denial answers key-not-found, so a
 * denied client learns nothing it could not learn by guessing at SKIs.
 */
export const ERROR_BYTE: Readonly<Record<ErrorCode, number>> = {
  BAD_REQUEST: ErrorByte.format,
  KEY_NOT_FOUND: ErrorByte.keyNotFound,
  FORBIDDEN: ErrorByte.keyNotFound,
  UNSUPPORTED: ErrorByte.badOpcode,
  CRYPTO_FAILURE: ErrorByte.cryptoFailed,
  BACKEND_UNAVAILABLE: ErrorByte.internal,
  OVERLOADED: ErrorByte.internal,
  TIMEOUT: ErrorByte.internal,
  INTERNAL: ErrorByte.internal,
};
