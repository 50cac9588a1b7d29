/**
 * The edge with Apache httpd: mod_ssl loads `pkcs11:` keys through the same engine and module
 * as nginx, in an event-MPM server whose threads sign concurrently in one process. Keys stay
 * in keylessd; real clients check every handshake and the page; keylessd audits each
 * signature under the agent's identity.
 */
import { join } from 'node:path';
import { startDaemon, writeKeyDir, generateKey, type RunningDaemon } from '../helpers/daemon';
import { makeTestPki, type TestPki } from '../helpers/pki';
import { freePort } from '../helpers/ports';
import { auditedHandshake, ensureModule, handshake, IS_ROOT, keyUri, moduleEnv, openDir, run, selfSignedCertificates, startAgent, startApache, waitForChildrenAs, type Agent, type Apache } from './harness';
import { until } from '../helpers/until';

const rsaKey = generateKey({ name: 'apache-rsa', type: 'rsa', bits: 2048 });
const ecKey = generateKey({ name: 'apache-p256', type: 'ec', curve: 'P-256' });

let pki: TestPki;
let server: RunningDaemon;
let agent: Agent;
let apache: Apache;
let keyDir: string;
let caFile: string;

beforeAll(async () => {
  ensureModule();
  pki = await makeTestPki({ commonName: 'edge agent apache-1' });
  keyDir = writeKeyDir([
    { name: 'apache-rsa', key: rsaKey },
    { name: 'apache-p256', key: ecKey },
  ]);
  server = await startDaemon({ backends: [{ type: 'file', dir: keyDir }], keys: { 'apache-rsa': { decrypt: true, decrypt_raw: true } } }, pki);
  agent = await startAgent(pki, [server.url]);
  const work = openDir('keylessd-edge-apache-');
  const issued = selfSignedCertificates(keyDir, work, ['apache-rsa', 'apache-p256']);
  const [rsaCert, ecCert] = issued.certs as [string, string];
  caFile = issued.caFile;
  apache = await startApache(moduleEnv(agent.socket, work), await freePort(), [
    { cert: ecCert, key: keyUri('apache-p256') },
    { cert: rsaCert, key: keyUri('apache-rsa') },
  ]);
}, 60_000);

afterAll(async () => {
  await apache?.stop();
  await agent?.stop();
  await server?.stop();
});

test('Apache children run unprivileged and cannot read any private key', async () => {
  if (!IS_ROOT) return; // the user switch needs root; CI runs as root
  await waitForChildrenAs(apache, 'nobody');
  const read = await run('su', ['-s', '/bin/sh', 'nobody', '-c', `cat ${join(keyDir, 'apache-rsa.pem')}`]);
  expect(read.code).not.toBe(0);
});

test.each([
  ['TLS 1.3 ECDSA', ['-tls1_3', '-sigalgs', 'ecdsa_secp256r1_sha256'], 'TLSv1.3', 'ECDSA', 'ECDSA_SHA256', 'apache-p256'],
  ['TLS 1.3 RSA-PSS', ['-tls1_3', '-sigalgs', 'rsa_pss_rsae_sha256'], 'TLSv1.3', 'RSA-PSS', 'RSA_PSS_SHA256', 'apache-rsa'],
  ['TLS 1.2 ECDHE-ECDSA', ['-tls1_2', '-cipher', 'ECDHE-ECDSA-AES128-GCM-SHA256'], 'TLSv1.2', 'ECDSA', 'ECDSA_SHA256', 'apache-p256'],
  ['TLS 1.2 ECDHE-RSA (PKCS#1 v1.5)', ['-tls1_2', '-cipher', 'ECDHE-RSA-AES128-GCM-SHA256', '-sigalgs', 'RSA+SHA384'], 'TLSv1.2', 'RSA', 'RSA_PKCS1_SHA384', 'apache-rsa'],
])('%s: a full handshake through keylessd, chain verified, page served, audited under the agent', async (_name, args, protocol, sigType, algorithm, key) => {
  const { result, records } = await auditedHandshake(apache.port, caFile, pki, args);
  expect({ ok: result.ok, protocol: result.protocol, peerSignatureType: result.peerSignatureType }).toEqual({ ok: true, protocol, peerSignatureType: sigType });
  expect(records).toContainEqual(
    expect.objectContaining({ operation: 'sign', algorithm, result: 'ok', key: expect.objectContaining({ name: key }), client: expect.objectContaining({ subject: expect.stringContaining('CN=edge agent apache-1') }) }),
  );
});

test('sixteen handshakes at once, signed by the threads of the event MPM, all succeed', async () => {
  const results = await Promise.all(
    Array.from({ length: 16 }, (_, i) => handshake(apache.port, caFile, i % 2 ? ['-tls1_3', '-sigalgs', 'rsa_pss_rsae_sha256'] : ['-tls1_3', '-sigalgs', 'ecdsa_secp256r1_sha256'])),
  );
  expect(results.map((r) => r.ok ? 'ok' : r.output)).toEqual(Array(16).fill('ok'));
});

test('TLS 1.2 plain RSA key exchange fails in Apache as in nginx (OpenSSL 3 engine keys lack the TLS padding), and Apache keeps serving', async () => {
  const result = await handshake(apache.port, caFile, ['-tls1_2', '-cipher', 'AES128-GCM-SHA256']);
  expect(result.ok).toBe(false);
  expect(result.output).toMatch(/alert/);
  await until(() => /illegal or unsupported padding mode/.test(apache.errorLog()), 15_000, 'Apache to log the padding failure');
  expect((await handshake(apache.port, caFile, ['-tls1_3'])).ok).toBe(true);
});
