import { constants, createPublicKey, publicEncrypt, randomBytes, verify, type KeyObject } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WebSocket } from 'ws';
import { SCHEME_OF, SIGNATURE_ALGORITHMS, keyTypeOf } from '../../src/core/crypto/algorithms';
import { hashMessage } from '../../src/core/crypto/hashes';
import type { KeylessSession } from '../../src/client/session';
import { RemoteError } from '../../src/client/errors';
import { pb, encodeRequest, decodeResponse } from '../../src/protocols/v1/codec';
import { verifies } from '../helpers/verify';
import { generateKey, startDaemon, writeKeyDir, type RunningDaemon, type TestKeySpec } from '../helpers/daemon';

const SPECS: TestKeySpec[] = [
  { name: 'rsa2048', type: 'rsa', bits: 2048 },
  { name: 'rsa3072', type: 'rsa', bits: 3072 },
  { name: 'rsa4096', type: 'rsa', bits: 4096 },
  { name: 'p256', type: 'ec', curve: 'P-256' },
  { name: 'p384', type: 'ec', curve: 'P-384' },
  { name: 'p521', type: 'ec', curve: 'P-521' },
  { name: 'ed25519', type: 'ed25519' },
];

const keys = new Map<string, KeyObject>(SPECS.map((spec) => [spec.name, generateKey(spec)]));
let server: RunningDaemon;
let session: KeylessSession;

beforeAll(async () => {
  const dir = writeKeyDir([...keys].map(([name, key]) => ({ name, key })));
  server = await startDaemon({ backends: [{ type: 'file', dir }], keys: { rsa2048: { decrypt: true, decrypt_raw: true }, rsa3072: { decrypt: true } } });
  session = await server.connect();
});
afterAll(async () => {
  await session.close();
  await server.stop();
});

const cases = SPECS.flatMap((spec) =>
  SIGNATURE_ALGORITHMS.filter((alg) => keyTypeOf(SCHEME_OF[alg]) === spec.type).flatMap((alg) =>
    (['digest', 'message'] as const).filter((form) => !(alg === 'ED25519' && form === 'digest')).map((form) => [spec.name, alg, form] as const),
  ),
);

test.each(cases)('%s signs with %s over a %s and crypto.verify accepts it', async (keyName, algorithm, form) => {
  const message = randomBytes(100);
  const scheme = SCHEME_OF[algorithm];
  const input = form === 'message' ? { message } : { digest: hashMessage(scheme.kind === 'ed25519' ? 'sha256' : scheme.hash, message) };
  const signature = await session.sign({ name: keyName }, algorithm, input);
  expect(verifies(algorithm, keys.get(keyName)!, message, signature)).toBe(true);
  // A signature over different bytes must not verify: the check above can fail.
  expect(verifies(algorithm, keys.get(keyName)!, randomBytes(100), signature)).toBe(false);
});

test('openssl accepts an ECDSA P-384 and an RSA-PSS signature made from a digest', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'keylessd-openssl-'));
  const message = randomBytes(64);
  writeFileSync(join(dir, 'msg'), message);
  for (const [name, algorithm, extra] of [
    ['p384', 'ECDSA_SHA384', []],
    ['rsa2048', 'RSA_PSS_SHA256', ['-sigopt', 'rsa_padding_mode:pss', '-sigopt', 'rsa_pss_saltlen:32']],
  ] as const) {
    const scheme = SCHEME_OF[algorithm];
    const hash = scheme.kind === 'ed25519' ? 'sha256' : scheme.hash;
    const signature = await session.sign({ name }, algorithm, { digest: hashMessage(hash, message) });
    writeFileSync(join(dir, `${name}.sig`), signature);
    writeFileSync(join(dir, `${name}.pub`), createPublicKey(keys.get(name)!).export({ format: 'pem', type: 'spki' }));
    const out = execFileSync('openssl', ['dgst', `-${hash}`, '-verify', join(dir, `${name}.pub`), ...extra, '-signature', join(dir, `${name}.sig`), join(dir, 'msg')]);
    expect(out.toString()).toContain('Verified OK');
  }
});

test('keys can be named by SKI and by SPKI SHA-256', async () => {
  const info = await session.getKey({ name: 'p256' });
  const message = Buffer.from('by ski');
  for (const ref of [{ ski: Buffer.from(info.ski!) }, { spkiSha256: Buffer.from(info.spkiSha256!) }]) {
    const signature = await session.sign(ref, 'ECDSA_SHA256', { message });
    expect(verify('sha256', message, createPublicKey(keys.get('p256')!), signature)).toBe(true);
  }
  expect(info).toMatchObject({ name: 'p256', type: 'ec', bits: 256, curve: 'P-256', backend: 'files', decryptAllowed: false });
  expect(Buffer.from(info.publicKey!).equals(createPublicKey(keys.get('p256')!).export({ format: 'der', type: 'spki' }))).toBe(true);
});

test('list_keys returns every key with its algorithms', async () => {
  const list = await session.listKeys();
  expect(list.map((k) => k.name).sort()).toEqual([...keys.keys()].sort());
  const rsa = list.find((k) => k.name === 'rsa2048')!;
  expect(rsa.decryptAllowed).toBe(true);
  expect(rsa.algorithms).toContain(pb.SignatureAlgorithm.RSA_PSS_SHA256);
  expect(rsa.algorithms).not.toContain(pb.SignatureAlgorithm.ECDSA_SHA256);
});

describe('decrypt', () => {
  test('RSA_RAW returns the full modulus-length block and OAEP-SHA256 the plaintext', async () => {
    const secret = randomBytes(48);
    const publicKey = createPublicKey(keys.get('rsa2048')!);
    const oaep = publicEncrypt({ key: publicKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, secret);
    expect((await session.decrypt({ name: 'rsa2048' }, 'rsa-oaep-sha256', oaep)).equals(secret)).toBe(true);
    const pkcs1 = publicEncrypt({ key: publicKey, padding: constants.RSA_PKCS1_PADDING }, secret);
    const block = await session.decrypt({ name: 'rsa2048' }, 'rsa-raw', pkcs1);
    expect(block.length).toBe(256);
    expect(block[0]).toBe(0);
    expect(block[1]).toBe(2);
    expect(block.subarray(256 - 48).equals(secret)).toBe(true);
  });

  test('is FORBIDDEN unless the key enables it, UNSUPPORTED for EC keys', async () => {
    await expect(session.decrypt({ name: 'rsa3072' }, 'rsa-raw', randomBytes(384))).rejects.toMatchObject({ code: 'FORBIDDEN' });
    await expect(session.decrypt({ name: 'p256' }, 'rsa-raw', randomBytes(32))).rejects.toMatchObject({ code: 'UNSUPPORTED' });
  });

  test('a ciphertext of the wrong length is BAD_REQUEST, a bad OAEP block CRYPTO_FAILURE', async () => {
    await expect(session.decrypt({ name: 'rsa2048' }, 'rsa-raw', randomBytes(100))).rejects.toMatchObject({ code: 'BAD_REQUEST' });
    const garbage = Buffer.concat([Buffer.from([0]), randomBytes(255)]);
    await expect(session.decrypt({ name: 'rsa2048' }, 'rsa-oaep-sha256', garbage)).rejects.toMatchObject({ code: 'CRYPTO_FAILURE' });
  });
});

describe('bad requests answer with their error code and the session goes on', () => {
  test.each([
    ['a digest of the wrong length', () => session.sign({ name: 'p256' }, 'ECDSA_SHA256', { digest: randomBytes(20) }), 'BAD_REQUEST'],
    ['a digest for Ed25519', () => session.sign({ name: 'ed25519' }, 'ED25519', { digest: randomBytes(32) }), 'BAD_REQUEST'],
    ['an unknown key name', () => session.sign({ name: 'nope' }, 'ECDSA_SHA256', { message: Buffer.from('x') }), 'KEY_NOT_FOUND'],
    ['an unknown SKI', () => session.sign({ ski: randomBytes(20) }, 'ECDSA_SHA256', { message: Buffer.from('x') }), 'KEY_NOT_FOUND'],
    ['an SKI of the wrong length', () => session.sign({ ski: randomBytes(19) }, 'ECDSA_SHA256', { message: Buffer.from('x') }), 'BAD_REQUEST'],
    ['an algorithm the key type cannot do', () => session.sign({ name: 'p256' }, 'RSA_PSS_SHA256', { message: Buffer.from('x') }), 'UNSUPPORTED'],
    ['an unknown key in get_key', () => session.getKey({ name: 'nope' }), 'KEY_NOT_FOUND'],
  ])('%s', async (_what, call, code) => {
    const failure = await (call as () => Promise<unknown>)().catch((err: unknown) => err);
    expect(failure).toBeInstanceOf(RemoteError);
    expect(failure).toMatchObject({ code });
    expect((failure as Error).message.length).toBeGreaterThan(10);
  });

  test.each([
    ['an unknown algorithm enum', { sign: { key: { name: 'p256' }, algorithm: 99, message: Buffer.from('x') } }],
    ['SIGNATURE_ALGORITHM_UNSPECIFIED', { sign: { key: { name: 'p256' }, message: Buffer.from('x') } }],
    ['a sign request with no input', { sign: { key: { name: 'p256' }, algorithm: pb.SignatureAlgorithm.ECDSA_SHA256 } }],
    ['a sign request with no key', { sign: { algorithm: pb.SignatureAlgorithm.ECDSA_SHA256, message: Buffer.from('x') } }],
    ['an unknown decrypt padding', { decrypt: { key: { name: 'rsa2048' }, padding: 7, ciphertext: randomBytes(256) } }],
    ['a request with no operation', {}],
  ])('%s is BAD_REQUEST', async (_what, body) => {
    const response = await session.request(body as never);
    expect(response.result).toBe('error');
    expect(response.error?.code).toBe(pb.ErrorCode.BAD_REQUEST);
    expect(await session.ping(Buffer.from('still here'))).toEqual(Buffer.from('still here'));
  });

  test('a 64-bit request id is echoed exactly', async () => {
    // The client numbers its own requests; a raw keyless.v1 WebSocket sends any id.
    const { pki } = server;
    const ws = new WebSocket(server.url, 'keyless.v1', { ca: pki.ca.certPem, cert: pki.client.certPem, key: pki.client.keyPem });
    await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
    const answer = new Promise<Buffer>((resolve) => ws.once('message', (data: Buffer) => resolve(data)));
    const Long = (await import('long')).default;
    const id = Long.fromString('18446744073709551557', true);
    ws.send(encodeRequest({ id, ping: { payload: Buffer.from('big id') } }));
    const response = decodeResponse(await answer);
    expect(response.id.toString()).toBe('18446744073709551557');
    ws.close();
  });
});
