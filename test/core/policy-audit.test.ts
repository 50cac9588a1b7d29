import { createPublicKey, generateKeyPairSync, verify } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { verifyAuditFiles } from '../../src/audit/verify';
import { issueCertificate, type CertificateAndKey } from '../../src/pki/certificates';
import { startDaemon, writeKeyDir, type RunningDaemon } from '../helpers/daemon';
import { until } from '../helpers/until';
import { auditRecords } from '../helpers/audit';

const message = Buffer.from('policy');
let server: RunningDaemon;
let euEdge: CertificateAndKey;
let usEdge: CertificateAndKey;

async function metricsText(daemon: RunningDaemon): Promise<string> {
  return (await fetch(`http://127.0.0.1:${daemon.addresses.metrics!.port}/metrics`)).text();
}


beforeAll(async () => {
  const keys = writeKeyDir([
    { name: 'eu-key', key: generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey },
    { name: 'open-key', key: generateKeyPairSync('ed25519').privateKey },
  ]);
  server = await startDaemon({
    backends: [{ type: 'file', dir: keys }],
    groups: { eu: { subject_ou: ['eu'] }, us: { subject_ou: ['us'] } },
    keys: { 'eu-key': { policy: { groups: ['eu'], operations: ['sign'] } } },
  });
  euEdge = await issueCertificate(server.pki.ca, 'client', { commonName: 'edge-fra1', organizationalUnit: 'eu', days: 1 });
  usEdge = await issueCertificate(server.pki.ca, 'client', { commonName: 'edge-iad1', organizationalUnit: 'us', days: 1 });
});
afterAll(() => server.stop());

test('an allowed group signs; another gets FORBIDDEN, audited, counted and hidden from list_keys', async () => {
  const eu = await server.connect(euEdge);
  const us = await server.connect(usEdge);
  await eu.sign({ name: 'eu-key' }, 'ECDSA_SHA256', { message });
  await expect(us.sign({ name: 'eu-key' }, 'ECDSA_SHA256', { message })).rejects.toMatchObject({ code: 'FORBIDDEN' });
  await us.sign({ name: 'open-key' }, 'ED25519', { message });
  await expect(us.sign({ name: 'missing' }, 'ED25519', { message })).rejects.toMatchObject({ code: 'KEY_NOT_FOUND' });

  expect((await us.listKeys()).map((k) => k.name)).toEqual(['open-key']);
  expect((await eu.listKeys()).map((k) => k.name).sort()).toEqual(['eu-key', 'open-key']);
  await expect(us.getKey({ name: 'eu-key' })).rejects.toMatchObject({ code: 'KEY_NOT_FOUND' });

  const text = await metricsText(server);
  expect(text).toMatch(/^keyless_policy_denials_total\{key="eu-key"\} 1$/m);
  expect(text).toMatch(/^keyless_requests_total\{listener="keyless.v1",operation="sign",algorithm="ECDSA_SHA256",backend="files",result="ok"\} 1$/m);
  expect(text).toMatch(/^keyless_requests_total\{listener="keyless.v1",operation="sign",algorithm="ECDSA_SHA256",backend="files",result="FORBIDDEN"\} 1$/m);
  expect(text).toMatch(/^keyless_requests_total\{listener="keyless.v1",operation="sign",algorithm="ED25519",backend="files",result="ok"\} 1$/m);
  expect(text).toMatch(/^keyless_requests_total\{listener="keyless.v1",operation="sign",algorithm="ED25519",backend="none",result="KEY_NOT_FOUND"\} 1$/m);
  expect(text).toMatch(/^keyless_audit_records_total 4$/m);
  expect(text).toMatch(/^keyless_sessions_active\{listener="keyless.v1"\} 2$/m);

  const records = auditRecords(server.pki.dir);
  expect(records[0]).toMatchObject({ seq: 1, type: 'genesis' });
  expect(records).toHaveLength(5);
  const denial = records.find((r) => r.result === 'FORBIDDEN')!;
  expect(denial).toMatchObject({
    operation: 'sign',
    algorithm: 'ECDSA_SHA256',
    listener: 'keyless.v1',
    key: { name: 'eu-key', ski: expect.stringMatching(/^[0-9a-f]{40}$/) },
    client: { subject: expect.stringContaining('CN=edge-iad1'), fingerprint: expect.stringMatching(/^[0-9a-f]{64}$/) },
    peer: expect.stringMatching(/^127\.0\.0\.1:\d+$/),
  });
  expect(verifyAuditFiles([join(server.pki.dir, 'audit.log')])).toMatchObject({ ok: true, records: 5 });
  await eu.close();
  await us.close();
});

test('the request context is recorded in the audit log', async () => {
  const eu = await server.connect(euEdge);
  const response = await eu.request({
    sign: { key: { name: 'open-key' }, algorithm: 13, message },
    context: { sni: 'www.example.com', clientIp: Buffer.from([203, 0, 113, 7]), requestId: 'req-42' },
  });
  expect(response.result).toBe('signature');
  const last = auditRecords(server.pki.dir).pop()!;
  expect(last.context).toEqual({ sni: 'www.example.com', clientIp: '203.0.113.7', requestId: 'req-42' });
  await eu.close();
});

describe('an audit log that cannot be written', () => {
  /** A daemon whose audit folder is removed once it serves: the log can then not be reopened. */
  async function withLostAuditFolder(onFailure: 'refuse' | 'continue') {
    const folder = mkdtempSync(join(tmpdir(), 'keylessd-audit-folder-'));
    const daemon = await startDaemon(
      { backends: [{ type: 'file', dir: writeKeyDir([{ name: 'k', key: generateKeyPairSync('ed25519').privateKey }]) }], audit: { path: join(folder, 'audit.log'), on_failure: onFailure } },
      server.pki,
    );
    rmSync(folder, { recursive: true });
    return daemon;
  }

  test('refuses key operations with BACKEND_UNAVAILABLE and reports not ready', async () => {
    const broken = await withLostAuditFolder('refuse');
    const session = await broken.connect();
    await expect(session.sign({ name: 'k' }, 'ED25519', { message })).rejects.toMatchObject({ code: 'BACKEND_UNAVAILABLE' });
    await expect(session.sign({ name: 'k' }, 'ED25519', { message })).rejects.toMatchObject({ code: 'BACKEND_UNAVAILABLE' });
    const ready = await fetch(`http://127.0.0.1:${broken.addresses.metrics!.port}/readyz`);
    expect(ready.status).toBe(503);
    expect(await ready.json()).toEqual({ ready: false, failed: [{ check: 'audit', problem: expect.stringMatching(/^the audit log \S+audit\.log cannot be written$/) }] });
    expect(await metricsText(broken)).toMatch(/^keyless_audit_write_failures_total [1-9]\d*$/m);
    await session.close();
    await broken.stop();
  });

  test('keeps serving when on_failure is continue', async () => {
    const lenient = await withLostAuditFolder('continue');
    const session = await lenient.connect();
    const key = lenient.daemon.registry.find({ name: 'k' })!.handle.publicKey;
    // Served and correct although the record cannot be written…
    const signature = await session.sign({ name: 'k' }, 'ED25519', { message });
    expect(verify(null, message, createPublicKey({ key: key.spki, format: 'der', type: 'spki' }), signature)).toBe(true);
    // …and the loss is visible: counted, and the audit readiness check fails.
    await until(async () => /^keyless_audit_write_failures_total [1-9]\d*$/m.test(await metricsText(lenient)), 10_000, 'the failed audit write to be counted');
    expect((await fetch(`http://127.0.0.1:${lenient.addresses.metrics!.port}/readyz`)).status).toBe(503);
    // …and it goes on serving while not ready: the next request is answered and correct too.
    const again = await session.sign({ name: 'k' }, 'ED25519', { message });
    expect(verify(null, message, createPublicKey({ key: key.spki, format: 'der', type: 'spki' }), again)).toBe(true);
    await session.close();
    await lenient.stop();
  });
});

test('a shutdown under load loses no answered request: every answered operation is in the audit log', async () => {
  const draining = await startDaemon(
    { backends: [{ type: 'file', dir: writeKeyDir([{ name: 'k', key: generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey }]) }] },
    await (await import('../helpers/pki')).makeTestPki(),
  );
  const session = await draining.connect();
  let answered = 0;
  const calls = Array.from({ length: 500 }, () => session.sign({ name: 'k' }, 'ECDSA_SHA256', { message }).then(() => answered++, () => {}));
  await until(() => answered >= 50, 30_000, '50 requests answered before the shutdown');
  await draining.stop();
  await Promise.all(calls);
  expect(answered).toBeGreaterThan(0);
  const okRecords = auditRecords(draining.pki.dir).filter((r) => r.result === 'ok');
  expect(okRecords.length).toBeGreaterThanOrEqual(answered);
  expect(verifyAuditFiles([join(draining.pki.dir, 'audit.log')]).ok).toBe(true);
});
