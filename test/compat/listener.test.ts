import { constants, createPublicKey, generateKeyPairSync, publicDecrypt, publicEncrypt, randomBytes, verify, type KeyObject } from 'node:crypto';
import { CompatClient } from '../../src/client/compat';
import { Tag, encodeFrame } from '../../src/protocols/compat/codec';
import { certificateDigest } from '../../src/protocols/compat/key-index';
import { Opcode } from '../../src/protocols/compat/request';
import { hashMessage } from '../../src/core/crypto/hashes';
import { describePublicKey } from '../../src/core/crypto/keyid';
import { issueCertificate } from '../../src/pki/certificates';
import { startDaemon, writeKeyDir, type RunningDaemon } from '../helpers/daemon';
import { until } from '../helpers/until';
import { auditRecords } from '../helpers/audit';

const keys: Record<string, KeyObject> = {
  rsa: generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey,
  p256: generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey,
  ed: generateKeyPairSync('ed25519').privateKey,
  locked: generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey,
};
const ski = (name: string) => describePublicKey(createPublicKey(keys[name]!).export({ format: 'der', type: 'spki' })).ski;
const message = Buffer.from('the edge signs this handshake');
let server: RunningDaemon;

beforeAll(async () => {
  server = await startDaemon({
    backends: [{ type: 'file', dir: writeKeyDir(Object.entries(keys).map(([name, key]) => ({ name, key }))) }],
    compat: { enabled: true },
    groups: { eu: { subject_ou: ['eu'], compliance_regions: [1] } },
    keys: { rsa: { decrypt_raw: true }, locked: { policy: { groups: ['eu'], operations: ['sign'] } } },
  });
});
afterAll(() => server.stop());

function client(maxVersion?: 'TLSv1.2' | 'TLSv1.3', cert = server.pki.client) {
  return CompatClient.connect({ host: '127.0.0.1', servername: 'localhost', port: server.addresses.compat!.port, ca: Buffer.from(server.pki.ca.certPem), cert: Buffer.from(cert.certPem), key: Buffer.from(cert.keyPem), maxVersion });
}

describe.each(['TLSv1.2', 'TLSv1.3'] as const)('over %s', (version) => {
  let c: CompatClient;
  beforeAll(async () => {
    c = await client(version);
    expect(c.socket.getProtocol()).toBe(version);
  });
  afterAll(() => c.close());

  test('ping answers pong with the payload', async () => {
    expect(await c.ping(Buffer.from('are you there'))).toEqual(Buffer.from('are you there'));
  });

  test.each([
    [0x05, 'sha256'],
    [0x06, 'sha384'],
    [0x07, 'sha512'],
    [0x03, 'sha1'],
  ] as const)('RSA PKCS#1 opcode 0x%s by SKI verifies', async (opcode, hash) => {
    const answer = await c.request(opcode, hashMessage(hash, message), [[Tag.ski, ski('rsa')]]);
    expect(answer.opcode).toBe(Opcode.response);
    expect(verify(hash, message, createPublicKey(keys.rsa!), answer.payload)).toBe(true);
  });

  test('RSA PKCS#1 MD5-SHA1 (0x02) has no DigestInfo', async () => {
    const answer = await c.request(0x02, hashMessage('md5-sha1', message), [[Tag.ski, ski('rsa')]]);
    expect(publicDecrypt({ key: createPublicKey(keys.rsa!), padding: constants.RSA_PKCS1_PADDING }, answer.payload)).toEqual(hashMessage('md5-sha1', message));
  });

  test.each([
    [0x35, 'sha256', 32],
    [0x36, 'sha384', 48],
    [0x37, 'sha512', 64],
  ] as const)('RSA-PSS opcode 0x%s, found by certificate digest, uses salt = hash length', async (opcode, hash, saltLength) => {
    const modulus = Buffer.from(createPublicKey(keys.rsa!).export({ format: 'jwk' }).n!, 'base64url');
    const answer = await c.request(opcode, hashMessage(hash, message), [[Tag.certDigest, certificateDigest(modulus)]]);
    expect(verify(hash, message, { key: createPublicKey(keys.rsa!), padding: constants.RSA_PKCS1_PSS_PADDING, saltLength }, answer.payload)).toBe(true);
  });

  test('ECDSA (0x15) returns a DER signature; Ed25519 (0x18) signs the message itself', async () => {
    const ecdsa = await c.request(0x15, hashMessage('sha256', message), [[Tag.ski, ski('p256')]]);
    expect(verify('sha256', message, createPublicKey(keys.p256!), ecdsa.payload)).toBe(true);
    const ed = await c.request(0x18, message, [[Tag.ski, ski('ed')]]);
    expect(verify(null, message, createPublicKey(keys.ed!), ed.payload)).toBe(true);
  });

  test('raw RSA decrypt (0x01) returns the modulus-length block', async () => {
    const secret = randomBytes(48);
    const answer = await c.request(0x01, publicEncrypt({ key: createPublicKey(keys.rsa!), padding: constants.RSA_PKCS1_PADDING }, secret), [[Tag.ski, ski('rsa')]]);
    expect(answer.payload).toHaveLength(256);
    expect(answer.payload.subarray(256 - 48)).toEqual(secret);
  });

  test.each([
    ['an unknown SKI', 0x15, () => [[Tag.ski, randomBytes(20)]], 0x02],
    ['no key item at all', 0x15, () => [], 0x02],
    ['decryption with an EC key', 0x01, () => [[Tag.ski, ski('p256')]], 0x05],
    ['a digest of the wrong length', 0x15, () => [[Tag.ski, ski('p256')]], 0x07],
    ['a policy denial, which looks like a missing key', 0x15, () => [[Tag.ski, ski('locked')]], 0x02],
  ] as const)('%s is answered with its error byte', async (_what, opcode, items, errorByte) => {
    const payload = _what.includes('wrong length') ? randomBytes(20) : hashMessage('sha256', message);
    const answer = await c.request(opcode, payload, items() as unknown as Array<[number, Buffer]>);
    expect(answer).toEqual({ opcode: Opcode.error, payload: Buffer.from([errorByte]) });
  });

  test('a malformed frame is answered under its id and the connection goes on', async () => {
    const versionTwo = Buffer.concat([Buffer.from([0x02, 0x00, 0x00, 0x04, 0, 0, 0x10, 0x01]), Buffer.from([0x11, 0x00, 0x01, 0xf1])]);
    expect(await c.send(0x1001, versionTwo)).toEqual({ opcode: Opcode.error, payload: Buffer.from([0x04]) });
    const serverOpcode = encodeFrame(0x1002, [[Tag.opcode, Buffer.from([0xf0])]]);
    expect(await c.send(0x1002, serverOpcode)).toEqual({ opcode: Opcode.error, payload: Buffer.from([0x06]) });
    expect(await c.ping(Buffer.from('still here'))).toEqual(Buffer.from('still here'));
  });

  test('500 pipelined requests on one connection are all answered, each under its own id', async () => {
    const digest = hashMessage('sha256', message);
    const answers = await Promise.all(Array.from({ length: 500 }, () => c.request(0x15, digest, [[Tag.ski, ski('p256')]])));
    expect(answers.every((a) => a.opcode === Opcode.response && verify('sha256', message, createPublicKey(keys.p256!), a.payload))).toBe(true);
  });
});

test('the compliance region in a request satisfies a regional policy, and goes into the audit log', async () => {
  const euEdge = await issueCertificate(server.pki.ca, 'client', { commonName: 'edge-ams', organizationalUnit: 'eu', days: 1 });
  const c = await client('TLSv1.2', euEdge);
  const digest = hashMessage('sha256', message);
  const denied = await c.request(0x15, digest, [[Tag.ski, ski('locked')], [Tag.complianceRegion, Buffer.from([2])]]);
  expect(denied.opcode).toBe(Opcode.error);
  const allowed = await c.request(0x15, digest, [[Tag.ski, ski('locked')], [Tag.complianceRegion, Buffer.from([1])], [Tag.requestContext, Buffer.from('{"request_id":"abc"}')], [Tag.sni, Buffer.from('eu.example.com')]]);
  expect(allowed.opcode).toBe(Opcode.response);
  c.close();
  const records = auditRecords(server.pki.dir);
  expect(records.at(-1)).toMatchObject({ listener: 'cloudflare', result: 'ok', context: { complianceRegion: 1, requestId: 'abc', sni: 'eu.example.com' } });
  expect(records.at(-2)).toMatchObject({ listener: 'cloudflare', result: 'FORBIDDEN' });
  const metrics = await (await fetch(`http://127.0.0.1:${server.addresses.metrics!.port}/metrics`)).text();
  expect(metrics).toMatch(/^keyless_requests_total\{listener="cloudflare",operation="sign",algorithm="ECDSA_SHA256",backend="files",result="ok"\} \d+$/m);
});

test('TLS 1.2 on the compat port allows only ECDHE with AEAD', async () => {
  const { connect } = await import('node:tls');
  const attempt = (ciphers: string) =>
    new Promise((resolve, reject) => {
      const s = connect({ host: '127.0.0.1', port: server.addresses.compat!.port, servername: 'localhost', ca: server.pki.ca.certPem, cert: server.pki.client.certPem, key: server.pki.client.keyPem, maxVersion: 'TLSv1.2', ciphers });
      s.once('secureConnect', () => (s.end(), resolve(true)));
      s.once('error', reject);
    });
  await expect(attempt('ECDHE-ECDSA-AES256-GCM-SHA384')).resolves.toBe(true);
  await expect(attempt('ECDHE-ECDSA-AES128-SHA')).rejects.toThrow();
});

test('a client that sends but never reads is paused until it reads; nothing is lost', async () => {
  const SEND_BUFFER = 16 * 1024;
  const small = await startDaemon(
    { backends: [{ type: 'file', dir: writeKeyDir([{ name: 'k', key: keys.p256! }]) }], compat: { enabled: true }, limits: { max_send_buffer_bytes: SEND_BUFFER } },
    server.pki,
  );
  const metric = async (name: string) => {
    const text = await (await fetch(`http://127.0.0.1:${small.addresses.metrics!.port}/metrics`)).text();
    return Number(new RegExp(`^${name}\\{listener="cloudflare"\\} (\\S+)$`, 'm').exec(text)?.[1] ?? 0);
  };
  const c = await CompatClient.connect({ host: '127.0.0.1', servername: 'localhost', port: small.addresses.compat!.port, ca: Buffer.from(server.pki.ca.certPem), cert: Buffer.from(server.pki.client.certPem), key: Buffer.from(server.pki.client.keyPem), requestTimeoutMs: 120_000 });
  c.socket.pause(); // never read an answer
  const payload = Buffer.alloc(1024, 7);
  const pongs = Array.from({ length: 5000 }, () => c.ping(payload));
  await until(async () => (await metric('keyless_sessions_paused')) === 1, 30_000, 'the daemon to stop reading the connection');
  expect(await metric('keyless_send_buffer_bytes')).toBeLessThan(SEND_BUFFER + 64 * (payload.length + 32));
  c.socket.resume();
  expect((await Promise.all(pongs)).every((pong) => pong.equals(payload))).toBe(true);
  expect(await metric('keyless_sessions_paused')).toBe(0);
  c.close();
  await small.stop();
});
