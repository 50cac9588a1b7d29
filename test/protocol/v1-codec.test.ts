import { SIGNATURE_ALGORITHMS } from '../../src/core/crypto/algorithms';
import { ERROR_CODES } from '../../src/errors';
import { decodeRequest, decodeResponse, encodeRequest, encodeResponse, errorResponse, keyRefFromMessage, pb, signatureAlgorithmFromMessage } from '../../src/protocols/v1/codec';

// Fixtures written by hand from the protobuf wire format, not produced by the encoder.
const hex = (text: string) => Buffer.from(text.replace(/\s/g, ''), 'hex');

test('a ping request decodes from its bytes', () => {
  const request = decodeRequest(hex('08 01  12 04  0a 02 68 69'));
  expect(request.op).toBe('ping');
  expect(Number(request.id)).toBe(1);
  expect(Buffer.from(request.ping!.payload!)).toEqual(Buffer.from('hi'));
});

test('a sign request by name with a digest decodes from its bytes', () => {
  const request = decodeRequest(hex('08 07  1a 0b  0a 03 1a 01 6b  10 09  1a 02 aa bb'));
  expect(request.op).toBe('sign');
  expect(request.sign!.input).toBe('digest');
  expect(keyRefFromMessage(request.sign!.key)).toEqual({ name: 'k' });
  expect(signatureAlgorithmFromMessage(request.sign!.algorithm)).toBe('ECDSA_SHA256');
  expect(Buffer.from(request.sign!.digest!)).toEqual(hex('aabb'));
});

test('the same sign request encodes to exactly those bytes', () => {
  const bytes = encodeRequest({ id: 7, sign: { key: { name: 'k' }, algorithm: pb.SignatureAlgorithm.ECDSA_SHA256, digest: hex('aabb') } });
  expect(Buffer.from(bytes)).toEqual(hex('08 07  1a 0b  0a 03 1a 01 6b  10 09  1a 02 aa bb'));
});

test('an error response encodes to its bytes and decodes back', () => {
  const bytes = errorResponse(7, 'KEY_NOT_FOUND', 'no');
  expect(Buffer.from(bytes)).toEqual(hex('08 07  7a 06  08 02 12 02 6e 6f'));
  const response = decodeResponse(bytes);
  expect(response.result).toBe('error');
  expect(response.error!.code).toBe(pb.ErrorCode.KEY_NOT_FOUND);
});

test('a signature response encodes to its bytes', () => {
  expect(Buffer.from(encodeResponse({ id: 300, signature: hex('0102') }))).toEqual(hex('08 ac 02  1a 02 01 02'));
});

test('enum names and numbers match PROTOCOL.md and the shared tables', () => {
  SIGNATURE_ALGORITHMS.forEach((name, i) => expect(pb.SignatureAlgorithm[name]).toBe(i + 1));
  ERROR_CODES.forEach((name, i) => expect(pb.ErrorCode[name]).toBe(i + 1));
  expect(pb.SignatureAlgorithm.SIGNATURE_ALGORITHM_UNSPECIFIED).toBe(0);
  expect(pb.DecryptPadding.RSA_RAW).toBe(1);
  expect(pb.DecryptPadding.RSA_OAEP_SHA256).toBe(2);
});

test.each([
  ['a truncated length-delimited field', '08 01 12 09 0a'],
  ['a field with wire type 7', '0f'],
  ['a varint that never ends', '08 ff ff ff ff ff ff ff ff ff ff ff'],
])('%s does not decode', (_what, bytes) => {
  expect(() => decodeRequest(hex(bytes))).toThrow();
});
