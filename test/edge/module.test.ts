/**
 * The PKCS#11 module called directly (pkcs11js), against a real agent and a real keylessd,
 * both separate processes: this process blocks in synchronous PKCS#11 calls, so nothing it
 * calls may run on its event loop. Covers what nginx does not reach: re-initialisation,
 * every mechanism and its parameters, attributes, constant-time unpadding results,
 * concurrent sessions from several threads, and the timeout.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { constants, createHash, createPublicKey, publicEncrypt, randomBytes, verify } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as pkcs11js from 'pkcs11js';
import { generateKey, writeKeyDir } from '../helpers/daemon';
import { makeTestPki, type TestPki } from '../helpers/pki';
import { freePort } from '../helpers/ports';
import { ensureModule, MODULE, openDir, ROOT, startAgent, type Agent } from './harness';
import { GiveUp, until } from '../helpers/until';
import { connect } from 'node:net';

const rsaKey = generateKey({ name: 'rsa', type: 'rsa', bits: 2048 });
const ecKey = generateKey({ name: 'p256', type: 'ec', curve: 'P-256' });
const p384Key = generateKey({ name: 'p384', type: 'ec', curve: 'P-384' });
const edKey = generateKey({ name: 'ed', type: 'ed25519' });
const lockedKey = generateKey({ name: 'locked', type: 'rsa', bits: 2048 });
const TIMEOUT_MS = 1000;

let pki: TestPki;
let keylessd: ChildProcess;
let agent: Agent;
let p11: pkcs11js.PKCS11;
let session: Buffer;

function code(fn: () => unknown): string {
  try {
    fn();
    return 'CKR_OK';
  } catch (err) {
    const c = (err as { code?: number }).code;
    const name = Object.entries(pkcs11js).find(([k, v]) => k.startsWith('CKR_') && v === c)?.[0];
    return name ?? String(err);
  }
}

function findKey(label: string, cls = pkcs11js.CKO_PRIVATE_KEY): Buffer {
  p11.C_FindObjectsInit(session, [
    { type: pkcs11js.CKA_CLASS, value: cls },
    { type: pkcs11js.CKA_LABEL, value: label },
  ]);
  const found = p11.C_FindObjects(session, 10);
  p11.C_FindObjectsFinal(session);
  if (found.length !== 1) throw new Error(`expected one ${label}, found ${found.length}`);
  return found[0]!;
}

const initArgs = () => ({ libraryParameters: `socket=${agent.socket} timeout_ms=${TIMEOUT_MS} keys_ttl_ms=100` });

beforeAll(async () => {
  ensureModule();
  pki = await makeTestPki({ commonName: 'edge module test' });
  const keyDir = writeKeyDir([
    { name: 'rsa', key: rsaKey },
    { name: 'p256', key: ecKey },
    { name: 'p384', key: p384Key },
    { name: 'ed', key: edKey },
    { name: 'locked', key: lockedKey },
  ]);
  const port = await freePort();
  const config = join(pki.dir, 'keylessd.yaml');
  writeFileSync(
    config,
    JSON.stringify({
      listen: { host: '127.0.0.1', port },
      metrics: { host: '127.0.0.1', port: await freePort() },
      tls: { cert: pki.files.serverCert, key: pki.files.serverKey, client_ca: pki.files.caCert },
      audit: { path: join(pki.dir, 'audit.log') },
      backends: [{ type: 'file', dir: keyDir }],
      keys: { rsa: { decrypt: true, decrypt_raw: true } },
    }),
  );
  keylessd = spawn(process.execPath, [join(ROOT, 'dist/src/cli/keylessd.js'), '--config', config, '--log-level', 'warn'], { stdio: 'ignore' });
  await until(() => {
    if (keylessd.exitCode !== null) throw new GiveUp(`keylessd exited ${keylessd.exitCode}`);
    return new Promise<boolean>((resolve) => {
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => (s.destroy(), resolve(true)));
      s.once('error', () => resolve(false));
    });
  }, 15_000, 'keylessd to listen');
  agent = await startAgent(pki, [`wss://127.0.0.1:${port}/v1`], { socketDir: openDir('keylessd-module-') });
  p11 = new pkcs11js.PKCS11();
  p11.load(MODULE);
  p11.C_Initialize(initArgs());
  session = p11.C_OpenSession(p11.C_GetSlotList(true)[0]!, pkcs11js.CKF_SERIAL_SESSION);
}, 60_000);

afterAll(async () => {
  try {
    p11?.C_Finalize();
    p11?.close();
  } catch {
    /* already finalized */
  }
  await agent?.stop();
  keylessd?.kill();
});

test('one token, the RSA and EC keys as private and public objects; Ed25519 is not offered', () => {
  const slots = p11.C_GetSlotList(true);
  expect(slots).toHaveLength(1);
  expect(p11.C_GetTokenInfo(slots[0]!).label.trim()).toBe('keylessd');
  p11.C_FindObjectsInit(session, []);
  const all = p11.C_FindObjects(session, 100);
  p11.C_FindObjectsFinal(session);
  const labels = all.map((h) => p11.C_GetAttributeValue(session, h, [{ type: pkcs11js.CKA_LABEL }, { type: pkcs11js.CKA_CLASS }])).map((a) => `${a[0]!.value!.toString()}:${(a[1]!.value as Buffer).readUInt32LE(0)}`);
  expect(labels.sort()).toEqual(['locked:2', 'locked:3', 'p256:2', 'p256:3', 'p384:2', 'p384:3', 'rsa:2', 'rsa:3']);
});

test('attributes are truthful: public parts from the key, private parts sensitive, CKA_ID the SKI', () => {
  const rsa = findKey('rsa');
  const jwk = createPublicKey(rsaKey).export({ format: 'jwk' });
  const [modulus, exponent, sensitive, extractable, decrypt, id] = p11.C_GetAttributeValue(session, rsa, [
    { type: pkcs11js.CKA_MODULUS },
    { type: pkcs11js.CKA_PUBLIC_EXPONENT },
    { type: pkcs11js.CKA_SENSITIVE },
    { type: pkcs11js.CKA_EXTRACTABLE },
    { type: pkcs11js.CKA_DECRYPT },
    { type: pkcs11js.CKA_ID },
  ]);
  expect(modulus!.value).toEqual(Buffer.from(jwk.n!, 'base64url'));
  expect(exponent!.value).toEqual(Buffer.from(jwk.e!, 'base64url'));
  expect([sensitive!.value, extractable!.value, decrypt!.value]).toEqual([Buffer.from([1]), Buffer.from([0]), Buffer.from([1])]);
  const spki = createPublicKey(rsaKey).export({ format: 'der', type: 'spki' });
  // SKI = SHA-1 of the subjectPublicKey BIT STRING contents (RFC 5280 method 1): the last 270 bytes of an RSA-2048 SPKI.
  expect(id!.value).toEqual(createHash('sha1').update(spki.subarray(spki.length - 270)).digest());
  expect(code(() => p11.C_GetAttributeValue(session, rsa, [{ type: pkcs11js.CKA_PRIVATE_EXPONENT }]))).toBe('CKR_ATTRIBUTE_SENSITIVE');

  const ec = findKey('p256', pkcs11js.CKO_PUBLIC_KEY);
  const [params, point] = p11.C_GetAttributeValue(session, ec, [{ type: pkcs11js.CKA_EC_PARAMS }, { type: pkcs11js.CKA_EC_POINT }]);
  expect(params!.value!.toString('hex')).toBe('06082a8648ce3d030107');
  const raw = createPublicKey(ecKey).export({ format: 'der', type: 'spki' }).subarray(-65);
  expect(point!.value).toEqual(Buffer.concat([Buffer.from([0x04, 65]), raw]));
});

test('CKM_RSA_PKCS signs DigestInfo and the 36-byte MD5||SHA-1 of TLS 1.1; other input is refused', () => {
  const rsa = findKey('rsa');
  const message = Buffer.from('edge module');
  const digestInfo = Buffer.concat([Buffer.from('3031300d060960864801650304020105000420', 'hex'), createHash('sha256').update(message).digest()]);
  p11.C_SignInit(session, { mechanism: pkcs11js.CKM_RSA_PKCS }, rsa);
  const signature = p11.C_Sign(session, digestInfo, Buffer.alloc(256));
  expect(verify('sha256', message, createPublicKey(rsaKey), signature)).toBe(true);

  const md5sha1 = Buffer.concat([createHash('md5').update(message).digest(), createHash('sha1').update(message).digest()]);
  p11.C_SignInit(session, { mechanism: pkcs11js.CKM_RSA_PKCS }, rsa);
  const tls11 = p11.C_Sign(session, md5sha1, Buffer.alloc(256));
  expect(require('node:crypto').publicDecrypt({ key: createPublicKey(rsaKey), padding: constants.RSA_PKCS1_PADDING }, tls11)).toEqual(md5sha1);

  p11.C_SignInit(session, { mechanism: pkcs11js.CKM_RSA_PKCS }, rsa);
  expect(code(() => p11.C_Sign(session, Buffer.from('not a digest info'), Buffer.alloc(256)))).toBe('CKR_DATA_INVALID');
});

test('CKM_RSA_PKCS_PSS with TLS parameters signs; other parameters are refused at SignInit', () => {
  const rsa = findKey('rsa');
  const message = Buffer.from('pss');
  for (const [hash, mech, mgf, len] of [
    ['sha256', pkcs11js.CKM_SHA256, pkcs11js.CKG_MGF1_SHA256, 32],
    ['sha384', pkcs11js.CKM_SHA384, pkcs11js.CKG_MGF1_SHA384, 48],
  ] as const) {
    p11.C_SignInit(session, { mechanism: pkcs11js.CKM_RSA_PKCS_PSS, parameter: { hashAlg: mech, mgf, saltLen: len, type: pkcs11js.CK_PARAMS_RSA_PSS } as pkcs11js.RsaPSS }, rsa);
    const signature = p11.C_Sign(session, createHash(hash).update(message).digest(), Buffer.alloc(256));
    expect(verify(hash, message, { key: createPublicKey(rsaKey), padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: len }, signature)).toBe(true);
  }
  const bad = { mechanism: pkcs11js.CKM_RSA_PKCS_PSS, parameter: { hashAlg: pkcs11js.CKM_SHA256, mgf: pkcs11js.CKG_MGF1_SHA256, saltLen: 20, type: pkcs11js.CK_PARAMS_RSA_PSS } as pkcs11js.RsaPSS };
  expect(code(() => p11.C_SignInit(session, bad, rsa))).toBe('CKR_MECHANISM_PARAM_INVALID');
  expect(code(() => p11.C_SignInit(session, { mechanism: pkcs11js.CKM_ECDSA }, rsa))).toBe('CKR_KEY_TYPE_INCONSISTENT');
});

test('CKM_ECDSA returns r||s of the curve size, for P-256 and P-384', () => {
  for (const [label, key, hash, size] of [
    ['p256', ecKey, 'sha256', 64],
    ['p384', p384Key, 'sha384', 96],
  ] as const) {
    const handle = findKey(label);
    const message = Buffer.from(`ecdsa ${label}`);
    p11.C_SignInit(session, { mechanism: pkcs11js.CKM_ECDSA }, handle);
    const signature = p11.C_Sign(session, createHash(hash).update(message).digest(), Buffer.alloc(size));
    expect(signature).toHaveLength(size);
    expect(verify(hash, message, { key: createPublicKey(key), dsaEncoding: 'ieee-p1363' }, signature)).toBe(true);
  }
});

test('CKM_RSA_PKCS decrypt strips PKCS#1 v1.5 padding; a bad block is CKR_ENCRYPTED_DATA_INVALID; OAEP and X.509 work', () => {
  const rsa = findKey('rsa');
  const pub = createPublicKey(rsaKey);
  const secret = randomBytes(48);
  p11.C_DecryptInit(session, { mechanism: pkcs11js.CKM_RSA_PKCS }, rsa);
  expect(p11.C_Decrypt(session, publicEncrypt({ key: pub, padding: constants.RSA_PKCS1_PADDING }, secret), Buffer.alloc(256))).toEqual(secret);

  // A block without the 00 02 … 00 structure: raw-encrypt 256 bytes that start 00 01.
  const block = Buffer.concat([Buffer.from([0, 1]), Buffer.alloc(254, 0xff)]);
  p11.C_DecryptInit(session, { mechanism: pkcs11js.CKM_RSA_PKCS }, rsa);
  expect(code(() => p11.C_Decrypt(session, publicEncrypt({ key: pub, padding: constants.RSA_NO_PADDING }, block), Buffer.alloc(256)))).toBe('CKR_ENCRYPTED_DATA_INVALID');
  // Too few padding bytes: 00 02, 7 non-zero bytes, 00, message.
  const short = Buffer.concat([Buffer.from([0, 2]), Buffer.alloc(7, 9), Buffer.from([0]), Buffer.alloc(246, 5)]);
  p11.C_DecryptInit(session, { mechanism: pkcs11js.CKM_RSA_PKCS }, rsa);
  expect(code(() => p11.C_Decrypt(session, publicEncrypt({ key: pub, padding: constants.RSA_NO_PADDING }, short), Buffer.alloc(256)))).toBe('CKR_ENCRYPTED_DATA_INVALID');

  p11.C_DecryptInit(session, { mechanism: pkcs11js.CKM_RSA_X_509 }, rsa);
  expect(p11.C_Decrypt(session, publicEncrypt({ key: pub, padding: constants.RSA_NO_PADDING }, block), Buffer.alloc(256))).toEqual(block);

  const oaep = { mechanism: pkcs11js.CKM_RSA_PKCS_OAEP, parameter: { hashAlg: pkcs11js.CKM_SHA256, mgf: pkcs11js.CKG_MGF1_SHA256, source: 1 /* CKZ_DATA_SPECIFIED */, type: pkcs11js.CK_PARAMS_RSA_OAEP } };
  p11.C_DecryptInit(session, oaep, rsa);
  expect(p11.C_Decrypt(session, publicEncrypt({ key: pub, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, secret), Buffer.alloc(256))).toEqual(secret);
});

test('a key without decryption: CKA_DECRYPT false, and keylessd refuses (CKR_KEY_FUNCTION_NOT_PERMITTED), the session goes on', () => {
  const locked = findKey('locked');
  expect(p11.C_GetAttributeValue(session, locked, [{ type: pkcs11js.CKA_DECRYPT }])[0]!.value).toEqual(Buffer.from([0]));
  p11.C_DecryptInit(session, { mechanism: pkcs11js.CKM_RSA_PKCS }, locked);
  const ciphertext = publicEncrypt({ key: createPublicKey(lockedKey), padding: constants.RSA_PKCS1_PADDING }, Buffer.from('secret'));
  expect(code(() => p11.C_Decrypt(session, ciphertext, Buffer.alloc(256)))).toBe('CKR_KEY_FUNCTION_NOT_PERMITTED');
  // The operation ended with the refusal: a new one can start.
  p11.C_DecryptInit(session, { mechanism: pkcs11js.CKM_RSA_PKCS }, locked);
  expect(code(() => p11.C_Decrypt(session, ciphertext, Buffer.alloc(256)))).toBe('CKR_KEY_FUNCTION_NOT_PERMITTED');
});

test('many signatures in flight from several sessions on the thread pool, all valid', async () => {
  const handle = findKey('p256');
  const sessions = Array.from({ length: 4 }, () => p11.C_OpenSession(p11.C_GetSlotList(true)[0]!, pkcs11js.CKF_SERIAL_SESSION));
  const signOnce = (s: Buffer, i: number) =>
    new Promise<boolean>((resolve, reject) => {
      const message = Buffer.from(`parallel ${i}`);
      p11.C_SignInit(s, { mechanism: pkcs11js.CKM_ECDSA }, handle);
      p11.C_Sign(s, createHash('sha256').update(message).digest(), Buffer.alloc(64), (err, signature) =>
        err ? reject(err) : resolve(verify('sha256', message, { key: createPublicKey(ecKey), dsaEncoding: 'ieee-p1363' }, signature)),
      );
    });
  for (let round = 0; round < 25; round++) {
    const results = await Promise.all(sessions.map((s, i) => signOnce(s, round * 4 + i)));
    expect(results).toEqual([true, true, true, true]);
  }
  sessions.forEach((s) => p11.C_CloseSession(s));
});

test('C_Initialize again is CKR_CRYPTOKI_ALREADY_INITIALIZED; after C_Finalize it works, with the same object handles', () => {
  const before = findKey('rsa');
  expect(code(() => p11.C_Initialize(initArgs()))).toBe('CKR_CRYPTOKI_ALREADY_INITIALIZED');
  p11.C_Finalize();
  expect(code(() => p11.C_GetSlotList(true))).toBe('CKR_CRYPTOKI_NOT_INITIALIZED');
  p11.C_Initialize(initArgs());
  session = p11.C_OpenSession(p11.C_GetSlotList(true)[0]!, pkcs11js.CKF_SERIAL_SESSION);
  expect(findKey('rsa')).toEqual(before);
});

/** A stand-in agent (its own process) that relays to the real one but sends every answer twice in one write. */
const DOUBLING_AGENT = `
const net = require('node:net');
const [listen, upstream] = process.argv.slice(1);
net.createServer((client) => {
  const real = net.connect(upstream);
  client.pipe(real);
  let pending = Buffer.alloc(0);
  real.on('data', (d) => {
    pending = Buffer.concat([pending, d]);
    while (pending.length >= 4 && pending.length >= 4 + pending.readUInt32BE(0)) {
      const frame = pending.subarray(0, 4 + pending.readUInt32BE(0));
      pending = pending.subarray(frame.length);
      client.write(Buffer.concat([frame, frame]));
    }
  });
  const end = () => (client.destroy(), real.destroy());
  client.on('error', end).on('close', end);
  real.on('error', end).on('close', end);
}).listen(listen);
`;

test('an agent that answers one request twice: C_Sign returns CKR_DEVICE_ERROR (the stream is broken), the real agent works again after', async () => {
  const handle = findKey('p256');
  const digest = createHash('sha256').update('doubled').digest();
  const fakeSocket = join(openDir('keylessd-fake-agent-'), 'fake.sock');
  const fake = spawn(process.execPath, ['-e', DOUBLING_AGENT, fakeSocket, agent.socket], { stdio: 'ignore' });
  try {
    await until(() => existsSync(fakeSocket), 15_000, 'the stand-in agent to listen');
    p11.C_Finalize();
    p11.C_Initialize({ libraryParameters: `socket=${fakeSocket} timeout_ms=${TIMEOUT_MS} keys_ttl_ms=100` });
    session = p11.C_OpenSession(p11.C_GetSlotList(true)[0]!, pkcs11js.CKF_SERIAL_SESSION);
    p11.C_SignInit(session, { mechanism: pkcs11js.CKM_ECDSA }, handle);
    expect(code(() => p11.C_Sign(session, digest, Buffer.alloc(64)))).toBe('CKR_DEVICE_ERROR');
  } finally {
    fake.kill();
    p11.C_Finalize();
    p11.C_Initialize(initArgs());
    session = p11.C_OpenSession(p11.C_GetSlotList(true)[0]!, pkcs11js.CKF_SERIAL_SESSION);
  }
  p11.C_SignInit(session, { mechanism: pkcs11js.CKM_ECDSA }, handle);
  const signature = p11.C_Sign(session, digest, Buffer.alloc(64));
  expect(verify('sha256', Buffer.from('doubled'), { key: createPublicKey(ecKey), dsaEncoding: 'ieee-p1363' }, signature)).toBe(true);
});

test('an agent that does not answer: C_Sign returns CKR_DEVICE_ERROR after the timeout, then works again', () => {
  const handle = findKey('p256');
  const digest = createHash('sha256').update('timeout').digest();
  process.kill(agent.process.pid!, 'SIGSTOP');
  let outcome: string;
  const started = Date.now();
  try {
    p11.C_SignInit(session, { mechanism: pkcs11js.CKM_ECDSA }, handle);
    outcome = code(() => p11.C_Sign(session, digest, Buffer.alloc(64)));
  } finally {
    process.kill(agent.process.pid!, 'SIGCONT');
  }
  const elapsed = Date.now() - started;
  expect(outcome).toBe('CKR_DEVICE_ERROR');
  expect(elapsed).toBeGreaterThanOrEqual(TIMEOUT_MS - 50);
  expect(elapsed).toBeLessThan(TIMEOUT_MS + 3000);
  p11.C_SignInit(session, { mechanism: pkcs11js.CKM_ECDSA }, handle);
  expect(p11.C_Sign(session, digest, Buffer.alloc(64))).toHaveLength(64);
});
