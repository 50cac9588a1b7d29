import fc from 'fast-check';
import { KeylessError } from '../../src/errors';
import { decodeRequest, encodeRequest } from '../../src/protocols/v1/codec';
import { interpretRequest, requestContext } from '../../src/protocols/v1/operation';

const RUNS = Number(process.env.FUZZ_RUNS ?? 100_000);

/**
 * What the server does with a frame, minus I/O: decode (failure closes the session with
 * 1002), then interpret (failure is an error response). Any other exception is a bug.
 */
function serve(bytes: Uint8Array): 'closed' | 'answered' | 'error-response' {
  let request;
  try {
    request = decodeRequest(bytes);
  } catch {
    return 'closed';
  }
  try {
    interpretRequest(request);
    requestContext(request);
    return 'answered';
  } catch (err) {
    if (err instanceof KeylessError && err.code === 'BAD_REQUEST') return 'error-response';
    throw err;
  }
}

const bytes = (max: number) => fc.uint8Array({ maxLength: max });
const keyRef = fc.oneof(
  fc.record({ ski: bytes(24) }),
  fc.record({ spkiSha256: bytes(40) }),
  fc.record({ name: fc.string({ maxLength: 20 }) }),
  fc.constant({}),
);
const anyEnum = fc.oneof(fc.integer({ min: -2, max: 20 }), fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }));
const request = fc.record(
  {
    id: fc.oneof(fc.nat(), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }).map((b) => b.toString())),
    ping: fc.record({ payload: bytes(64) }),
    sign: fc.record({ key: keyRef, algorithm: anyEnum, digest: bytes(80), message: bytes(80) }, { requiredKeys: [] }),
    decrypt: fc.record({ key: keyRef, padding: anyEnum, ciphertext: bytes(600) }, { requiredKeys: [] }),
    getKey: fc.record({ key: keyRef }, { requiredKeys: [] }),
    listKeys: fc.constant({}),
    context: fc.record({ sni: fc.string(), clientIp: bytes(20), serverIp: bytes(20), requestId: fc.string() }, { requiredKeys: [] }),
  },
  { requiredKeys: [] },
);
const encoded = request.map((r) => Buffer.from(encodeRequest(r as never)));

test(`random bytes never escape as an exception (${RUNS} cases)`, () => {
  fc.assert(fc.property(bytes(512), (b) => void serve(b)), { numRuns: RUNS });
});

test(`mutated valid requests never escape as an exception (${RUNS} cases)`, () => {
  const mutated = fc.tuple(encoded, fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 }), fc.constantFrom('flip', 'cut', 'insert')), { maxLength: 4 })).map(([frame, edits]) => {
    let out = Buffer.from(frame);
    for (const [at, value, edit] of edits) {
      const i = out.length === 0 ? 0 : at % out.length;
      if (edit === 'flip') out[i] = value;
      else if (edit === 'cut') out = out.subarray(0, i);
      else out = Buffer.concat([out.subarray(0, i), Buffer.from([value]), out.subarray(i)]);
    }
    return out;
  });
  fc.assert(fc.property(mutated, (b) => void serve(b)), { numRuns: RUNS });
});

test('every enum value of a well-formed request is either served or BAD_REQUEST', () => {
  fc.assert(
    fc.property(request, (r) => {
      expect(['answered', 'error-response']).toContain(serve(encodeRequest(r as never)));
    }),
    { numRuns: 20_000 },
  );
});

test('deeply nested length-delimited fields are refused, not a stack overflow', () => {
  // field 3 (sign) wrapping field 1 (key) wrapping ... thousands deep.
  let frame = Buffer.from([0x1a, 0x00]);
  for (let depth = 0; depth < 5000; depth++) frame = Buffer.concat([Buffer.from([0x0a]), varint(frame.length), frame]);
  expect(['closed', 'error-response']).toContain(serve(Buffer.concat([Buffer.from([0x1a]), varint(frame.length), frame])));
});

function varint(n: number): Buffer {
  const out: number[] = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  out.push(n);
  return Buffer.from(out);
}
