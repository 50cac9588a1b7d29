import { generateKeyPairSync } from 'node:crypto';
import fc from 'fast-check';
import {
  CngStatus,
  decodeRequest,
  decodeResponse,
  encodeRequest,
  encodeResponse,
  FrameError,
  FrameReader,
  MAX_FRAME_BODY,
  type CngResponse,
} from '../../backends/cng/codec';
import { spkiFromPublicBlob } from '../../backends/cng/public-blob';
import { operationError } from '../../backends/cng/status';
import { describePublicKey } from '../../src/core/crypto/keyid';
import { publicBlob } from './blobs';

const request = fc.record({
  id: fc.integer({ min: 0, max: 0xffffffff }),
  operation: fc.integer({ min: 0, max: 255 }),
  keyName: fc.string({ maxLength: 40 }),
  machine: fc.boolean(),
  padding: fc.integer({ min: 0, max: 255 }),
  hash: fc.integer({ min: 0, max: 255 }),
  payload: fc.uint8Array({ maxLength: 300 }).map((bytes) => Buffer.from(bytes)),
});

const response: fc.Arbitrary<CngResponse> = fc.oneof(
  fc.record({ id: fc.integer({ min: 0, max: 0xffffffff }), status: fc.constant(CngStatus.ok), data: fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b)) }),
  fc.record({ id: fc.integer({ min: 0, max: 0xffffffff }), status: fc.integer({ min: 1, max: 255 }), code: fc.integer({ min: 0, max: 0xffffffff }), message: fc.string({ maxLength: 60 }) }),
);

/** Feeds `stream` to a reader in pieces cut at `cuts`, collecting whole bodies. */
function readInPieces(reader: FrameReader, stream: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => c % (stream.length + 1)))].sort((a, b) => a - b);
  const bodies: Buffer[] = [];
  let from = 0;
  for (const to of [...points, stream.length]) {
    bodies.push(...reader.push(stream.subarray(from, to)));
    from = to;
  }
  return bodies;
}

test('requests survive encoding, any chunking of the stream, and decoding', () => {
  fc.assert(
    fc.property(fc.array(request, { minLength: 1, maxLength: 6 }), fc.array(fc.nat(), { maxLength: 12 }), (requests, cuts) => {
      const reader = new FrameReader(5);
      const bodies = readInPieces(reader, Buffer.concat(requests.map(encodeRequest)), cuts);
      expect(bodies.map(decodeRequest)).toEqual(requests);
      expect(reader.pending).toBe(0);
    }),
  );
});

test('responses survive encoding, any chunking of the stream, and decoding', () => {
  fc.assert(
    fc.property(fc.array(response, { minLength: 1, maxLength: 6 }), fc.array(fc.nat(), { maxLength: 12 }), (responses, cuts) => {
      const bodies = readInPieces(new FrameReader(), Buffer.concat(responses.map(encodeResponse)), cuts);
      expect(bodies.map(decodeResponse)).toEqual(responses);
    }),
  );
});

test('the frame layout is the one docs/cng.md specifies', () => {
  const frame = encodeRequest({ id: 0x01020304, operation: 2, keyName: 'k', machine: true, padding: 1, hash: 3, payload: Buffer.from([0xaa, 0xbb]) });
  expect(frame.toString('hex')).toBe('0d000000' + '04030201' + '02' + '0100' + '6b' + '01' + '01' + '03' + 'aabb');
  const answer = encodeResponse({ id: 7, status: CngStatus.unsupported, code: 0x80090029, message: 'no' });
  expect(answer.toString('hex')).toBe('0b000000' + '07000000' + '05' + '29000980' + '6e6f');
});

test('a partial frame waits for the rest', () => {
  const reader = new FrameReader();
  const frame = encodeResponse({ id: 1, status: CngStatus.ok, data: Buffer.alloc(10, 7) });
  expect(reader.push(frame.subarray(0, 12))).toEqual([]);
  expect(reader.pending).toBe(12);
  expect(reader.push(frame.subarray(12)).map(decodeResponse)).toEqual([{ id: 1, status: CngStatus.ok, data: Buffer.alloc(10, 7) }]);
});

test.each([
  ['shorter than id and status', Buffer.from([4, 0, 0, 0])],
  ['zero', Buffer.from([0, 0, 0, 0])],
  ['over the limit', Buffer.from([1, 0, 0x10, 0])],
])('a frame length %s breaks the stream', (_what, header) => {
  expect(() => new FrameReader().push(header)).toThrow(FrameError);
});

test('the limit itself is a legal frame length', () => {
  const header = Buffer.alloc(4);
  header.writeUInt32LE(MAX_FRAME_BODY);
  expect(new FrameReader().push(header)).toEqual([]);
});

test('a request body shorter than its declared fields is malformed but keeps its id', () => {
  const body = encodeRequest({ id: 42, operation: 2, keyName: 'key', machine: false, padding: 1, hash: 3, payload: Buffer.alloc(0) }).subarray(4);
  body.writeUInt16LE(200, 5); // the name now claims 200 bytes
  expect(decodeRequest(body)).toEqual({ id: 42, malformed: true });
  expect(decodeRequest(body.subarray(0, 6))).toEqual({ id: 42, malformed: true });
});

test('response bodies without their mandatory fields are frame errors', () => {
  expect(() => decodeResponse(Buffer.from([1, 0, 0, 0]))).toThrow(FrameError);
  expect(() => decodeResponse(Buffer.from([1, 0, 0, 0, CngStatus.cryptoFailure, 0]))).toThrow(FrameError);
});

test('requests that cannot fit a frame are refused at encoding', () => {
  const base = { id: 1, operation: 2, machine: false, padding: 0, hash: 0 };
  expect(() => encodeRequest({ ...base, keyName: 'x'.repeat(70_000), payload: Buffer.alloc(0) })).toThrow(FrameError);
  expect(() => encodeRequest({ ...base, keyName: 'k', payload: Buffer.alloc(MAX_FRAME_BODY) })).toThrow(FrameError);
});

describe('public key blobs', () => {
  const keys = [
    ['RSA-2048', generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey],
    ['RSA-3072 exponent 3', generateKeyPairSync('rsa', { modulusLength: 3072, publicExponent: 3 }).publicKey],
    ['P-256', generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey],
    ['P-384', generateKeyPairSync('ec', { namedCurve: 'P-384' }).publicKey],
    ['P-521', generateKeyPairSync('ec', { namedCurve: 'P-521' }).publicKey],
  ] as const;

  test.each(keys)('%s: the SPKI built from the CNG blob is the key\'s own, so the SKI matches', (_name, key) => {
    const spki = key.export({ format: 'der', type: 'spki' });
    const fromBlob = spkiFromPublicBlob(publicBlob(key));
    expect(fromBlob).toEqual(spki);
    expect(describePublicKey(fromBlob).ski).toEqual(describePublicKey(spki).ski);
  });

  test('truncated and non-ECDSA blobs are refused with the reason', () => {
    const blob = publicBlob(keys[0][1]);
    expect(() => spkiFromPublicBlob(blob.subarray(0, 100))).toThrow(/truncated/);
    const ecdh = Buffer.from(publicBlob(keys[2][1]));
    ecdh.writeUInt32LE(0x314b4345); // ECK1: an ECDH P-256 key
    expect(() => spkiFromPublicBlob(ecdh)).toThrow(/magic 0x314b4345/);
  });
});

test.each([
  [CngStatus.badInput, 'BAD_REQUEST'],
  [CngStatus.unsupported, 'UNSUPPORTED'],
  [CngStatus.badOperation, 'UNSUPPORTED'],
  [CngStatus.keyNotFound, 'CRYPTO_FAILURE'],
  [CngStatus.cryptoFailure, 'CRYPTO_FAILURE'],
  [CngStatus.badFrame, 'INTERNAL'],
  [99, 'INTERNAL'],
])('shim status %i on an operation is %s', (status, code) => {
  const error = operationError(status, 0x80090029, 'NCryptSignHash failed', 'signing');
  expect(error.code).toBe(code);
  expect(error.message).toMatch(/^signing/);
});
