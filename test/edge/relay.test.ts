/**
 * The agent's relay cut: which module frames go to keylessd as bytes, and exactly which bytes.
 * Anything not in the module's shape takes the decode-and-re-encode path instead (relayParts
 * returns undefined), so keylessd never gets a slice it could parse differently.
 */
import { relayParts, topLevelFields, withoutField } from '../../src/edge/agent';
import { decodeRequest, decodeResponse, encodeRequest, encodeResponse, pb } from '../../src/protocols/v1/codec';

const digest = Buffer.alloc(32, 7);
const sign = { key: { ski: Buffer.alloc(20, 1) }, algorithm: pb.SignatureAlgorithm.ECDSA_SHA256, digest };

test('a module frame is cut into its id field and its operation field; the operation decodes as sent', () => {
  const frame = Buffer.from(encodeRequest({ id: 300, sign }));
  const parts = relayParts(frame)!;
  expect(Number(decodeRequest(parts.idField).id)).toBe(300);
  const forwarded = decodeRequest(Buffer.concat([parts.operation, encodeRequest({ id: 5 })]));
  expect(Number(forwarded.id)).toBe(5);
  expect(Buffer.from(forwarded.sign!.digest!)).toEqual(digest);
  const decrypt = relayParts(Buffer.from(encodeRequest({ id: 1, decrypt: { key: { name: 'k' }, padding: pb.DecryptPadding.RSA_RAW, ciphertext: Buffer.alloc(256, 3) } })))!;
  expect(decodeRequest(decrypt.operation).decrypt?.ciphertext).toHaveLength(256);
  // id 0 is not on the wire at all; a context is dropped, as the decoding path drops it.
  expect(relayParts(Buffer.from(encodeRequest({ id: 0, sign })))!.idField).toHaveLength(0);
  const withContext = relayParts(Buffer.from(encodeRequest({ id: 2, sign, context: { sni: 'example.com' } })))!;
  expect(decodeRequest(withContext.operation).context).toBeNull();
});

test('frames not in the module\'s shape are not cut', () => {
  const op = Buffer.from(encodeRequest({ sign }));
  const id = Buffer.from(encodeRequest({ id: 9 }));
  expect(relayParts(Buffer.concat([id, op, op]))).toBeUndefined(); // two operations
  expect(relayParts(Buffer.concat([id, id, op]))).toBeUndefined(); // two ids
  expect(relayParts(Buffer.concat([id, op, Buffer.from([0x10, 0x01])]))).toBeUndefined(); // another field (ping's number, as a varint)
  expect(relayParts(Buffer.concat([id, Buffer.from([0x18, 0x03])]))).toBeUndefined(); // field 3 not length-delimited
  expect(relayParts(Buffer.concat([Buffer.from([0x0a, 0x01, 0x00]), op]))).toBeUndefined(); // id not a varint
  expect(relayParts(id)).toBeUndefined(); // no operation
  expect(relayParts(Buffer.from([0x1a, 0x7f, 0x00]))).toBeUndefined(); // does not parse
});

test('keylessd\'s answer loses its id and keeps the rest byte for byte', () => {
  const bytes = Buffer.from(encodeResponse({ id: 123456, signature: Buffer.alloc(72, 9) }));
  const parts = withoutField(bytes, 1);
  const rest = Buffer.concat(parts);
  expect(topLevelFields(rest).map((f) => f.field)).toEqual([3]);
  const answer = decodeResponse(Buffer.concat([rest, Buffer.from(encodeRequest({ id: 77 }))]));
  expect({ id: Number(answer.id), signature: Buffer.from(answer.signature!) }).toEqual({ id: 77, signature: Buffer.alloc(72, 9) });
});
