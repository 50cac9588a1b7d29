/**
 * The edge proof: keylessd holds the keys (files nginx cannot read), the agent holds the
 * client pool, nginx terminates TLS with `engine:pkcs11:` keys served by our module, and
 * real clients (openssl s_client, curl) check every handshake and the page.
 */
import { createPublicKey } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startDaemon, writeKeyDir, generateKey, type RunningDaemon } from '../helpers/daemon';
import { makeTestPki, type TestPki } from '../helpers/pki';
import { freePort } from '../helpers/ports';
import { auditedHandshake, ensureModule, handshake, IS_ROOT, keyUri, MODULE, moduleEnv, openDir, run, selfSignedCertificates, startAgent, startNginx, waitForChildrenAs, type Agent, type Nginx } from './harness';
import { until } from '../helpers/until';
import { auditRecords } from '../helpers/audit';

const rsaKey = generateKey({ name: 'edge-rsa', type: 'rsa', bits: 2048 });
const ecKey = generateKey({ name: 'edge-p256', type: 'ec', curve: 'P-256' });
const lockedKey = generateKey({ name: 'edge-rsa-locked', type: 'rsa', bits: 2048 });

let pki: TestPki;
let server: RunningDaemon;
let agent: Agent;
let nginx: Nginx;
let env: NodeJS.ProcessEnv;
let work: string;
let keyDir: string;
let caFile: string;
let rsaCert: string;
let ecCert: string;

beforeAll(async () => {
  ensureModule();
  pki = await makeTestPki({ commonName: 'edge agent nginx-1' });
  keyDir = writeKeyDir([
    { name: 'edge-rsa', key: rsaKey },
    { name: 'edge-p256', key: ecKey },
    { name: 'edge-rsa-locked', key: lockedKey },
  ]);
  // The RSA key that must decrypt (TLS 1.2 RSA key exchange: raw RSA; pkcs11-tool --test: OAEP) gets both; the locked one neither.
  server = await startDaemon({ backends: [{ type: 'file', dir: keyDir }], keys: { 'edge-rsa': { decrypt: true, decrypt_raw: true } } }, pki);
  agent = await startAgent(pki, [server.url], { metricsPort: await freePort() });
  work = openDir('keylessd-edge-');
  env = moduleEnv(agent.socket, work);
  const issued = selfSignedCertificates(keyDir, work, ['edge-rsa', 'edge-p256']);
  [rsaCert, ecCert] = issued.certs as [string, string];
  caFile = issued.caFile;
  nginx = await startNginx(env, [
    {
      port: await freePort(),
      certs: [
        { cert: ecCert, key: `engine:pkcs11:${keyUri('edge-p256')}` },
        { cert: rsaCert, key: `engine:pkcs11:${keyUri('edge-rsa')}` },
      ],
    },
  ]);
}, 60_000);

afterAll(async () => {
  await nginx?.stop();
  await agent?.stop();
  await server?.stop();
});

test('nginx workers run unprivileged and cannot read any private key', async () => {
  if (!IS_ROOT) return; // the user switch needs root; CI runs as root
  await waitForChildrenAs(nginx, 'nobody', 'nginx: worker');
  const read = await run('su', ['-s', '/bin/sh', 'nobody', '-c', `cat ${join(keyDir, 'edge-rsa.pem')}`]);
  expect(read.code).not.toBe(0);
});

test.each([
  ['TLS 1.3 ECDSA', ['-tls1_3', '-sigalgs', 'ecdsa_secp256r1_sha256'], 'TLSv1.3', 'ECDSA', 'ECDSA_SHA256', 'edge-p256'],
  ['TLS 1.3 RSA-PSS', ['-tls1_3', '-sigalgs', 'rsa_pss_rsae_sha256'], 'TLSv1.3', 'RSA-PSS', 'RSA_PSS_SHA256', 'edge-rsa'],
  ['TLS 1.2 ECDHE-ECDSA', ['-tls1_2', '-cipher', 'ECDHE-ECDSA-AES128-GCM-SHA256'], 'TLSv1.2', 'ECDSA', 'ECDSA_SHA256', 'edge-p256'],
  ['TLS 1.2 ECDHE-RSA (PKCS#1 v1.5)', ['-tls1_2', '-cipher', 'ECDHE-RSA-AES128-GCM-SHA256', '-sigalgs', 'RSA+SHA384'], 'TLSv1.2', 'RSA', 'RSA_PKCS1_SHA384', 'edge-rsa'],
  ['TLS 1.2 ECDHE-RSA (PSS)', ['-tls1_2', '-cipher', 'ECDHE-RSA-AES256-GCM-SHA384'], 'TLSv1.2', 'RSA-PSS', 'RSA_PSS_SHA256', 'edge-rsa'],
])('%s: a full handshake through keylessd, chain verified, page served, audited under the agent', async (_name, args, protocol, sigType, algorithm, key) => {
  const { result, records } = await auditedHandshake(nginx.port, caFile, pki, args);
  expect({ ok: result.ok, protocol: result.protocol, peerSignatureType: result.peerSignatureType }).toEqual({ ok: true, protocol, peerSignatureType: sigType });
  expect(records).toContainEqual(
    expect.objectContaining({ operation: 'sign', algorithm, result: 'ok', key: expect.objectContaining({ name: key }), client: expect.objectContaining({ subject: expect.stringContaining('CN=edge agent nginx-1') }) }),
  );
});

test('curl fetches the page over TLS 1.3 and TLS 1.2 with each certificate', async () => {
  for (const [cert, extra] of [
    [ecCert, ['--tlsv1.3']],
    [rsaCert, ['--tlsv1.2', '--tls-max', '1.2', '--ciphers', 'ECDHE-RSA-AES128-GCM-SHA256']],
    [ecCert, ['--tlsv1.2', '--tls-max', '1.2', '--ciphers', 'ECDHE-ECDSA-AES256-GCM-SHA384']],
  ] as const) {
    const result = await run('curl', ['-sS', '--fail', '--cacert', cert, '--resolve', `localhost:${nginx.port}:127.0.0.1`, ...extra, `https://localhost:${nginx.port}/`], { env: { OPENSSL_CONF: '/dev/null' } });
    expect({ code: result.code, stderr: result.stderr, body: result.stdout }).toEqual({ code: 0, stderr: '', body: 'served by nginx through keylessd\n' });
  }
});

test('TLS 1.2 plain RSA key exchange fails in nginx (OpenSSL 3 engine keys lack the TLS padding), while the module decrypts', async () => {
  // OpenSSL 3.0's engine path cannot do RSA_PKCS1_WITH_TLS_PADDING (OpenSSL issue 16738): the
  // handshake fails inside nginx before any PKCS#11 call, whatever the module does.
  const result = await handshake(nginx.port, caFile, ['-tls1_2', '-cipher', 'AES128-GCM-SHA256']);
  expect(result.ok).toBe(false);
  expect(result.output).toMatch(/alert/);
  await until(() => /illegal or unsupported padding mode/.test(nginx.errorLog()), 15_000, 'nginx to log the padding failure');
  expect(nginx.process.exitCode).toBeNull();

  // The module's CKM_RSA_PKCS decryption itself works for the key that may decrypt…
  const pub = join(work, 'rsa.pub');
  writeFileSync(pub, createPublicKey(rsaKey).export({ type: 'spki', format: 'pem' }));
  const secret = Buffer.from('48 bytes of a TLS 1.2 premaster secret.........');
  writeFileSync(join(work, 'secret'), secret);
  expect((await run('openssl', ['pkeyutl', '-encrypt', '-pubin', '-inkey', pub, '-in', join(work, 'secret'), '-out', join(work, 'secret.enc')], { env: { OPENSSL_CONF: '/dev/null' } })).code).toBe(0);
  const decrypted = await run('openssl', ['pkeyutl', '-engine', 'pkcs11', '-keyform', 'engine', '-inkey', keyUri('edge-rsa'), '-decrypt', '-in', join(work, 'secret.enc')], { env });
  expect(Buffer.from(decrypted.stdout, 'latin1')).toEqual(secret);

  // …and for a key without decrypt keylessd refuses and audits the refusal under the agent's identity.
  const lockedPub = join(work, 'locked.pub');
  writeFileSync(lockedPub, createPublicKey(lockedKey).export({ type: 'spki', format: 'pem' }));
  await run('openssl', ['pkeyutl', '-encrypt', '-pubin', '-inkey', lockedPub, '-in', join(work, 'secret'), '-out', join(work, 'locked.enc')], { env: { OPENSSL_CONF: '/dev/null' } });
  const refused = await run('openssl', ['pkeyutl', '-engine', 'pkcs11', '-keyform', 'engine', '-inkey', keyUri('edge-rsa-locked'), '-decrypt', '-in', join(work, 'locked.enc')], { env });
  expect(refused.code).toBe(1); // refused, not crashed
  expect(refused.stdout).not.toContain('premaster');
  const denial = await until(() => auditRecords(pki.dir).find((r) => r.operation === 'decrypt_raw' && r.key?.name === 'edge-rsa-locked'), 15_000, 'the audited decrypt denial');
  expect(denial).toMatchObject({ result: 'FORBIDDEN', client: expect.objectContaining({ subject: expect.stringContaining('CN=edge agent nginx-1') }) });
  expect(auditRecords(pki.dir)).toContainEqual(expect.objectContaining({ operation: 'decrypt_raw', result: 'ok', key: expect.objectContaining({ name: 'edge-rsa' }) }));
});

test('pkcs11-tool lists the objects truthfully, signs (verified with the public key) and passes --test', async () => {
  const toolEnv = { ...env, OPENSSL_CONF: '/dev/null' };
  const list = await run('pkcs11-tool', ['--module', MODULE, '--list-objects'], { env: toolEnv });
  expect(list.code).toBe(0);
  for (const name of ['edge-rsa', 'edge-p256', 'edge-rsa-locked']) expect(list.stdout).toContain(`label:      ${name}`);
  // CKA_DECRYPT only where policy allows it.
  const blocks = list.stdout.split(/(?=Private Key Object|Public Key Object)/);
  const privateOf = (name: string) => blocks.find((b) => b.startsWith('Private Key Object') && b.includes(`label:      ${name}\n`))!;
  expect(privateOf('edge-rsa')).toMatch(/Usage:\s+decrypt, sign/);
  expect(privateOf('edge-rsa-locked')).toMatch(/Usage:\s+sign\n/);
  expect(privateOf('edge-p256')).toMatch(/Access:\s+sensitive, always sensitive, never extractable/);

  const digest = Buffer.alloc(32, 7);
  writeFileSync(join(work, 'digest'), digest);
  const ski = /ID:\s+([0-9a-f]{40})/.exec(privateOf('edge-p256'))![1]!;
  const signed = await run('pkcs11-tool', ['--module', MODULE, '--sign', '-m', 'ECDSA', '--id', ski, '-i', join(work, 'digest'), '-o', join(work, 'sig'), '--signature-format', 'openssl'], { env: toolEnv });
  expect(signed.code).toBe(0);
  writeFileSync(join(work, 'p256.pub'), createPublicKey(ecKey).export({ type: 'spki', format: 'pem' }));
  const verified = await run('openssl', ['pkeyutl', '-verify', '-pubin', '-inkey', join(work, 'p256.pub'), '-in', join(work, 'digest'), '-sigfile', join(work, 'sig')], { env: { OPENSSL_CONF: '/dev/null' } });
  expect(verified.stdout).toContain('Signature Verified Successfully');

  const test = await run('pkcs11-tool', ['--module', MODULE, '--test'], { env: toolEnv });
  expect({ code: test.code, tail: test.stdout.trim().split('\n').pop() }).toEqual({ code: 0, tail: 'No errors' });
});

test('openssl s_server -engine pkcs11 -keyform engine serves a handshake', async () => {
  const port = await freePort();
  const { spawn } = await import('node:child_process');
  const child = spawn('openssl', ['s_server', '-engine', 'pkcs11', '-keyform', 'engine', '-key', keyUri('edge-p256'), '-cert', ecCert, '-accept', `127.0.0.1:${port}`, '-www', '-naccept', '1'], { env: { ...process.env, ...env }, stdio: 'ignore' });
  const exited = new Promise((r) => child.once('exit', r));
  try {
    const result = await until(async () => {
      const r = await run('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-CAfile', ecCert, '-verify_return_error', '-brief', '-tls1_3'], { env: { OPENSSL_CONF: '/dev/null' }, input: 'GET / HTTP/1.0\r\n\r\n', timeoutMs: 5000 });
      return r.code === 0 && /Signature type: ECDSA/.test(r.stdout + r.stderr) && r;
    }, 15_000, 'a handshake with s_server');
    expect(result.code).toBe(0);
  } finally {
    child.kill();
    await exited;
  }
});

test('the agent reports its health and counts what the module asked, by operation and result', async () => {
  const health = await fetch(`http://127.0.0.1:${agent.metricsPort}/healthz`);
  expect(health.status).toBe(200);
  expect(await health.json()).toMatchObject({ ok: true, servers: [{ url: server.url, open: 2, setAside: false }], keys: 3 });
  const metrics = await (await fetch(`http://127.0.0.1:${agent.metricsPort}/metrics`)).text();
  expect(metrics).toMatch(/^keylessd_agent_requests_total\{op="sign",result="ok"\} [1-9]\d*$/m);
  expect(metrics).toMatch(/^keylessd_agent_requests_total\{op="decrypt",result="FORBIDDEN"\} [1-9]\d*$/m);
  expect(metrics).toMatch(/^keylessd_agent_requests_total\{op="listKeys",result="ok"\} [1-9]\d*$/m);
  expect(metrics).toMatch(/^keylessd_agent_request_seconds_count\{op="sign"\} [1-9]\d*$/m);
  // The refusal is in the agent's log with the key's name and the cause, and no secret.
  expect(agent.log()).toMatch(/"op":"decrypt","key":"\\"edge-rsa-locked\\" \(SKI [0-9a-f]{40}\)","code":"FORBIDDEN"/);
});
