import Long from 'long';
import { decodeResponse, encodeBytesResponse, encodeResponse, ResponseBytesField } from '../../src/protocols/v1/codec';

// The server writes signature and plaintext responses with its own encoder; they must be
// the bytes protobufjs writes for the same message, for every id and length.
const ids: Array<number | Long> = [
  0,
  1,
  127,
  128,
  16_383,
  16_384,
  0xffffffff,
  2 ** 32,
  Number.MAX_SAFE_INTEGER,
  Long.fromString('18446744073709551615', true),
  Long.fromString('9223372036854775808', true),
  Long.fromNumber(300, true),
  Long.UZERO,
];
const lengths = [0, 1, 64, 71, 72, 127, 128, 256, 512, 16_384];

test.each(ids.map((id) => [String(id), id]))('id %s: the fast encoder writes what protobufjs writes', (_name, id) => {
  for (const length of lengths) {
    const bytes = Buffer.alloc(length, 0xa5);
    for (const [name, field] of Object.entries(ResponseBytesField)) {
      const fast = encodeBytesResponse(id, field, bytes);
      expect(Buffer.from(fast).toString('hex')).toBe(Buffer.from(encodeResponse({ id, [name]: bytes })).toString('hex'));
      const back = decodeResponse(fast);
      expect(back.result).toBe(name);
    }
  }
});

test('byte fixtures: a 71-byte signature for request 300, and id 0 omitted', () => {
  const signature = Buffer.alloc(71, 1);
  expect(encodeBytesResponse(300, ResponseBytesField.signature, signature).subarray(0, 5).toString('hex')).toBe('08ac021a47');
  expect(encodeBytesResponse(0, ResponseBytesField.plaintext, Buffer.from('hi')).toString('hex')).toBe('22026869');
});
