import fc from 'fast-check';
import { CompatFormatError, FrameReader, decodeFrame, encodeFrame } from '../../src/protocols/compat/codec';
import { certificateDigest } from '../../src/protocols/compat/key-index';
import { ERROR_BYTE, interpretFrame } from '../../src/protocols/compat/request';
import { ERROR_CODES } from '../../src/errors';

// Fixtures written by hand from COMPAT.md, not produced by the encoder.
const hex = (text: string) => Buffer.from(text.replace(/\s/g, ''), 'hex');
const SKI = '00112233445566778899aabbccddeeff00112233';
/** A request: header, opcode item, payload item, SKI item. */
const request = (id: string, opcode: string, payload: string, extra = '') => {
  const body = hex(`11 0001 ${opcode}  12 ${(payload.replace(/\s/g, '').length / 2).toString(16).padStart(4, '0')} ${payload}  04 0014 ${SKI} ${extra}`);
  return Buffer.concat([hex(`01 00 ${body.length.toString(16).padStart(4, '0')} ${id}`), body]);
};

test('a ping request and its pong response, byte for byte', () => {
  const ping = hex('01 00 0009 00000007  11 0001 f1  12 0002 6869');
  const parsed = interpretFrame(decodeFrame(ping));
  expect(parsed).toMatchObject({ id: 7, operation: { kind: 'ping', payload: Buffer.from('hi') } });
  const pong = encodeFrame(7, [
    [0x11, Buffer.from([0xf2])],
    [0x12, Buffer.from('hi')],
  ]);
  expect(pong).toEqual(hex('01 00 0009 00000007  11 0001 f2  12 0002 6869'));
});

test('an error response is opcode 0xFF with one error byte', () => {
  expect(encodeFrame(9, [[0x11, Buffer.from([0xff])], [0x12, Buffer.from([0x02])]])).toEqual(hex('01 00 0008 00000009  11 0001 ff  12 0001 02'));
});

test.each([
  ['01', { kind: 'decrypt' }],
  ['02', { kind: 'sign', algorithm: 'RSA_PKCS1_MD5_SHA1', scheme: { kind: 'rsa-pkcs1', hash: 'md5-sha1' } }],
  ['03', { kind: 'sign', algorithm: 'RSA_PKCS1_SHA1', scheme: { kind: 'rsa-pkcs1', hash: 'sha1' } }],
  ['04', { kind: 'sign', algorithm: 'RSA_PKCS1_SHA224', scheme: { kind: 'rsa-pkcs1', hash: 'sha224' } }],
  ['05', { kind: 'sign', algorithm: 'RSA_PKCS1_SHA256', scheme: { kind: 'rsa-pkcs1', hash: 'sha256' } }],
  ['06', { kind: 'sign', algorithm: 'RSA_PKCS1_SHA384', scheme: { kind: 'rsa-pkcs1', hash: 'sha384' } }],
  ['07', { kind: 'sign', algorithm: 'RSA_PKCS1_SHA512', scheme: { kind: 'rsa-pkcs1', hash: 'sha512' } }],
  ['35', { kind: 'sign', algorithm: 'RSA_PSS_SHA256', scheme: { kind: 'rsa-pss', hash: 'sha256' } }],
  ['36', { kind: 'sign', algorithm: 'RSA_PSS_SHA384', scheme: { kind: 'rsa-pss', hash: 'sha384' } }],
  ['37', { kind: 'sign', algorithm: 'RSA_PSS_SHA512', scheme: { kind: 'rsa-pss', hash: 'sha512' } }],
  ['12', { kind: 'sign', algorithm: 'ECDSA_MD5_SHA1', scheme: { kind: 'ecdsa', hash: 'md5-sha1' } }],
  ['13', { kind: 'sign', algorithm: 'ECDSA_SHA1', scheme: { kind: 'ecdsa', hash: 'sha1' } }],
  ['14', { kind: 'sign', algorithm: 'ECDSA_SHA224', scheme: { kind: 'ecdsa', hash: 'sha224' } }],
  ['15', { kind: 'sign', algorithm: 'ECDSA_SHA256', scheme: { kind: 'ecdsa', hash: 'sha256' } }],
  ['16', { kind: 'sign', algorithm: 'ECDSA_SHA384', scheme: { kind: 'ecdsa', hash: 'sha384' } }],
  ['17', { kind: 'sign', algorithm: 'ECDSA_SHA512', scheme: { kind: 'ecdsa', hash: 'sha512' } }],
  ['18', { kind: 'sign', algorithm: 'ED25519', scheme: { kind: 'ed25519' } }],
  ['f1', { kind: 'ping' }],
])('opcode 0x%s decodes to its operation', (opcode, operation) => {
  const parsed = interpretFrame(decodeFrame(request('00000001', opcode, 'aabb')));
  expect(parsed.operation).toMatchObject({ ...operation, payload: hex('aabb') });
  expect(parsed.ski).toEqual(hex(SKI));
});

test.each([
  ['major version 2', hex('02 00 0004 00000005  11 0001 f1'), 0x04],
  ['an item running past the body', hex('01 00 0005 00000005  12 0009 aabb'), 0x07],
  ['an item header cut short', hex('01 00 0002 00000005  12 00'), 0x07],
  ['a known tag twice', hex('01 00 0008 00000005  11 0001 f1  11 0001 f1'), 0x07],
  ['no opcode', hex('01 00 0005 00000005  12 0002 6869'), 0x07],
  ['a 2-byte opcode', hex('01 00 0005 00000005  11 0002 f1f1'), 0x07],
  ['a server-only opcode (0xF0)', hex('01 00 0004 00000005  11 0001 f0'), 0x06],
  ['a server-only opcode (0xFF)', hex('01 00 0004 00000005  11 0001 ff'), 0x06],
  ['seal (0x21), not offered', hex('01 00 0004 00000005  11 0001 21'), 0x05],
  ['custom (0x24), not offered', hex('01 00 0004 00000005  11 0001 24'), 0x05],
  ['an unknown opcode', hex('01 00 0004 00000005  11 0001 99'), 0x05],
  ['an SKI of 19 bytes', hex('01 00 0019 00000005  11 0001 f1  04 0013 00112233445566778899aabbccddeeff001122'), 0x07],
  ['a client IP of 5 bytes', hex('01 00 000c 00000005  11 0001 f1  03 0005 0102030405'), 0x07],
  ['a request context that is not JSON', hex('01 00 0008 00000005  11 0001 f1  16 0001 7b'), 0x07],
])('%s is answered with error 0x%s under the request id', (_what, frame, errorByte) => {
  const failure = (() => {
    try {
      interpretFrame(decodeFrame(frame));
    } catch (err) {
      return err;
    }
    throw new Error('expected a format error');
  })();
  expect(failure).toBeInstanceOf(CompatFormatError);
  expect(failure).toMatchObject({ id: 5, errorByte });
});

test('unknown tags are skipped and padding is accepted', () => {
  const frame = hex('01 00 0012 00000003  11 0001 f1  7e 0002 0000  20 0004 00000000');
  expect(interpretFrame(decodeFrame(frame)).operation.kind).toBe('ping');
});

test('request facts: SNI, addresses, request id and compliance region', () => {
  const ctx = Buffer.from('{"request_id":"r-1"}').toString('hex');
  const frame = request('00000002', '15', 'aa', `02 0007 ${Buffer.from('a.b.com').toString('hex')}  03 0004 cb007107  05 0010 20010db8000000000000000000000001  16 ${(ctx.length / 2).toString(16).padStart(4, '0')} ${ctx}  17 0001 04`);
  expect(interpretFrame(decodeFrame(frame)).facts).toEqual({ sni: 'a.b.com', clientIp: '203.0.113.7', serverIp: '2001:db8::1', requestId: 'r-1', complianceRegion: 4 });
});

test('requests are padded to 1024 body bytes with tag 0x20', () => {
  const padded = encodeFrame(1, [[0x11, Buffer.from([0xf1])]], 1024);
  expect(padded.readUInt16BE(2)).toBe(1024);
  expect(padded[8 + 4]).toBe(0x20);
});

test('the frame reader splits a stream however it arrives', () => {
  const frames = [request('00000001', 'f1', '01'), request('00000002', '15', 'aabbcc'), hex('02 00 0004 00000003  11 0001 f1')];
  const stream = Buffer.concat(frames);
  for (const cut of [1, 3, 7, 8, 9, 20, stream.length]) {
    const reader = new FrameReader();
    const out: Buffer[] = [];
    for (let i = 0; i < stream.length; i += cut) out.push(...reader.push(stream.subarray(i, i + cut)));
    expect(out).toEqual(frames);
    expect(reader.pending).toBe(0);
  }
});

test('the certificate digest is SHA-256 of the modulus as uppercase hex text', () => {
  // computed independently: echo -n 00AB | sha256sum
  expect(certificateDigest(hex('00ab')).toString('hex')).toBe('2740ad531697c4a0d9a89e7629f563b5e1a09baf1550c4a9fedfefabd0cfea2d');
});

test('every dispatcher error code maps to an error byte; a denial looks like a missing key', () => {
  for (const code of ERROR_CODES) expect(ERROR_BYTE[code]).toBeGreaterThan(0);
  expect(ERROR_BYTE.FORBIDDEN).toBe(ERROR_BYTE.KEY_NOT_FOUND);
});

test('random and mutated frames never escape as anything but a format error (100,000 cases)', () => {
  const valid = fc.constantFrom(request('00000001', '15', 'aa'.repeat(32)), request('00000002', 'f1', ''), hex('01 00 0004 00000005  11 0001 f1'));
  const mutated = fc.tuple(valid, fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 4 })).map(([frame, edits]) => {
    const out = Buffer.from(frame);
    for (const [at, value] of edits) out[at % out.length] = value;
    return out;
  });
  const frames = fc.oneof(mutated, fc.uint8Array({ minLength: 8, maxLength: 300 }).map((b) => Buffer.from(b)));
  fc.assert(
    fc.property(frames, (bytes) => {
      const reader = new FrameReader();
      for (const frame of reader.push(bytes)) {
        try {
          interpretFrame(decodeFrame(frame));
        } catch (err) {
          if (!(err instanceof CompatFormatError)) throw err;
        }
      }
    }),
    { numRuns: 100_000 },
  );
});
