/**
 * The CNG backend end to end: a keylessd process started from a YAML config naming a `cng`
 * backend, its provider and key names, serving signatures made by keyless-cng-shim.exe
 * under Wine to a keyless.v1 client over mutual TLS. Runs when wine and the built shim are
 * present (CI builds it); otherwise it says it was skipped.
 *
 * Wine cannot open persisted keys (docs/cng.md), so the shim_path is importing-shim.ts:
 * the real shim with the test keys imported before keylessd's first frame. Everything
 * from keylessd's side is what it does on Windows. PSS has its own RSA key because of
 * Wine's PSS-then-PKCS#1 bug (wine.test.ts); keylessd serves one key once, so it cannot be
 * the same key under another name.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { stringify } from 'yaml';
import { KeylessSession } from '../../src/client/session';
import type { SignatureAlgorithm } from '../../src/core/crypto/algorithms';
import { describePublicKey } from '../../src/core/crypto/keyid';
import { makeTestPki, type TestPki } from '../helpers/pki';
import { freePort } from '../helpers/ports';
import { verifies } from '../helpers/verify';
import { prepareImportingShim, startWine, wineMissing, winePids } from './wine';
import { until } from '../helpers/until';
import { auditRecords } from '../helpers/audit';

const missing = wineMissing();
if (missing) console.warn(`test/cng/daemon.test.ts SKIPPED: ${missing}. keylessd with a cng backend was not tested.`);
const describeWine = missing ? describe.skip : describe;

const run = promisify(execFile);
const cli = (name: string) => join(__dirname, '..', '..', 'dist', 'src', 'cli', name);
const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
const rsaPss = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
/** keylessd name → [CNG key name, key]. */
const SERVED: Readonly<Record<string, [string, KeyObject]>> = {
  'web-rsa': ['edge-rsa', rsa],
  'web-rsa-pss': ['edge-rsa-pss', rsaPss],
  'web-ec': ['edge-p256', ec],
};
const ski = (key: KeyObject) => describePublicKey(createPublicKey(key).export({ format: 'der', type: 'spki' })).ski;

describeWine('keylessd with a cng backend, the shim under Wine', () => {
  let stopWine: () => void;
  let work: string;
  let pki: TestPki;
  let configFile: string;
  let ports: { listen: number; metrics: number };
  let daemon: ChildProcess;
  let log = '';
  let session: KeylessSession;

  function writeConfig(keys: Readonly<Record<string, [string, KeyObject]>>): void {
    const config = {
      listen: { host: '127.0.0.1', port: ports.listen },
      metrics: { host: '127.0.0.1', port: ports.metrics },
      tls: { cert: pki.files.serverCert, key: pki.files.serverKey, client_ca: pki.files.caCert },
      audit: { path: join(work, 'audit.log') },
      backends: [
        {
          type: 'cng',
          name: 'windows',
          provider: 'Microsoft Software Key Storage Provider',
          shim_path: join(work, 'importing-shim'),
          keys: Object.entries(keys).map(([name, [keyName]]) => ({ name, key_name: keyName })),
        },
      ],
    };
    writeFileSync(configFile, stringify(config));
  }

  beforeAll(async () => {
    stopWine = startWine();
    work = mkdtempSync(join(tmpdir(), 'keylessd-cng-daemon-'));
    pki = await makeTestPki();
    prepareImportingShim(work, Object.fromEntries(Object.values(SERVED)));
    ports = { listen: await freePort(), metrics: await freePort() };
    configFile = join(work, 'keylessd.yaml');
    writeConfig(SERVED);
    daemon = spawn(process.execPath, [cli('keylessd.js'), '--config', configFile], { env: process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    daemon.stdout!.on('data', (chunk: Buffer) => (log += chunk.toString()));
    daemon.stderr!.on('data', (chunk: Buffer) => (log += chunk.toString()));
    await until(() => log.includes('keylessd serving') || daemon.exitCode !== null, 120_000, 'keylessd to serve');
    if (daemon.exitCode !== null) throw new Error(`keylessd exited with ${daemon.exitCode}:\n${log}`);
    session = await KeylessSession.connect({ url: `wss://127.0.0.1:${ports.listen}/v1`, ca: Buffer.from(pki.ca.certPem), cert: Buffer.from(pki.client.certPem), key: Buffer.from(pki.client.keyPem) });
  }, 300_000);

  afterAll(async () => {
    session?.close();
    if (daemon?.exitCode === null) daemon.kill('SIGKILL');
    stopWine?.();
    rmSync(work, { recursive: true, force: true });
  }, 60_000);

  test('--check-config opens every key of the cng backend through the shim', async () => {
    const { stdout } = await run(process.execPath, [cli('keylessd.js'), '--check-config', configFile, '--skip-port-check'], { env: process.env });
    expect(stdout).toBe(`${configFile}: OK, 3 keys from 1 backend(s)\n`);
  });

  test('the keys are served under their configured names, from the cng backend, with the SKI every backend gives them', async () => {
    const keys = await session.listKeys();
    expect(keys.map((k) => [k.name, k.backend, Buffer.from(k.ski!)]).sort()).toEqual(
      Object.entries(SERVED)
        .map(([name, [, key]]) => [name, 'windows', ski(key)])
        .sort(),
    );
  });

  const SIGNATURES: ReadonlyArray<[string, SignatureAlgorithm, KeyObject]> = [
    ['web-rsa', 'RSA_PKCS1_SHA256', rsa],
    ['web-rsa', 'RSA_PKCS1_SHA384', rsa],
    ['web-rsa', 'RSA_PKCS1_SHA512', rsa],
    ['web-rsa-pss', 'RSA_PSS_SHA256', rsaPss],
    ['web-rsa-pss', 'RSA_PSS_SHA512', rsaPss],
    ['web-ec', 'ECDSA_SHA256', ec],
  ];
  test.each(SIGNATURES)('%s signs %s and the signature verifies', async (name, algorithm, key) => {
    const message = Buffer.from(`TLS transcript for ${name} ${algorithm}`);
    const signature = await session.sign({ name }, algorithm, { message });
    expect(verifies(algorithm, key, message, signature)).toBe(true);
  });

  test('keylessctl signs with a CNG key and openssl verifies it', async () => {
    const message = join(work, 'message');
    writeFileSync(message, 'keylessd on Windows, checked on Linux\n');
    writeFileSync(join(work, 'client.crt'), pki.client.certPem);
    writeFileSync(join(work, 'client.key'), pki.client.keyPem, { mode: 0o600 });
    const flags = ['--server', `127.0.0.1:${ports.listen}`, '--ca', pki.files.caCert, '--client-cert', join(work, 'client.crt'), '--client-key', join(work, 'client.key')];
    const { stdout: hex } = await run(process.execPath, [cli('keylessctl.js'), 'sign', '--key', 'web-ec', '--algorithm', 'ECDSA_SHA256', '--message', message, ...flags]);
    const { stdout: pem } = await run(process.execPath, [cli('keylessctl.js'), 'key', 'web-ec', '--pem', ...flags]);
    writeFileSync(join(work, 'web-ec.pub'), pem);
    writeFileSync(join(work, 'signature'), Buffer.from(hex.trim(), 'hex'));
    const { stdout } = await run('openssl', ['dgst', '-sha256', '-verify', join(work, 'web-ec.pub'), '-signature', join(work, 'signature'), message]);
    expect(stdout.trim()).toBe('Verified OK');
  });

  test('many signatures in flight over several sessions all verify', async () => {
    const messages = Array.from({ length: 200 }, (_, i) => Buffer.from(`handshake ${i}`));
    const signatures = await Promise.all(messages.map((message, i) => session.sign({ name: i % 2 ? 'web-ec' : 'web-rsa' }, i % 2 ? 'ECDSA_SHA256' : 'RSA_PKCS1_SHA256', { message })));
    signatures.forEach((signature, i) => expect(verifies(i % 2 ? 'ECDSA_SHA256' : 'RSA_PKCS1_SHA256', i % 2 ? ec : rsa, messages[i]!, signature)).toBe(true));
  });

  test('the audit log names the CNG keys used and the metrics show the backend up', async () => {
    await until(() => readFileSync(join(work, 'audit.log'), 'utf8').includes('"web-rsa-pss"'), 5_000, 'the audit records');
    const records = auditRecords(work);
    const signed = new Set(records.filter((r) => r.operation === 'sign' && r.result === 'ok').map((r) => r.key.name));
    expect([...signed].sort()).toEqual(Object.keys(SERVED).sort());
    const metrics = await (await fetch(`http://127.0.0.1:${ports.metrics}/metrics`)).text();
    expect(metrics).toMatch(/^keyless_backend_up\{backend="windows"\} 1$/m);
    expect(metrics).toMatch(/^keyless_keys_loaded\{backend="windows"\} 3$/m);
  });

  test('SIGHUP with a key removed from the config: a new shim serves the rest, the old one exits', async () => {
    const before = winePids('keyless-cng-shim');
    expect(before).toHaveLength(1);
    const { 'web-rsa-pss': _removed, ...rest } = SERVED;
    writeConfig(rest);
    daemon.kill('SIGHUP');
    await until(() => log.includes('reloaded: serving 2 keys'), 60_000, 'the reload');
    await until(() => winePids('keyless-cng-shim').every((pid) => !before.includes(pid)), 10_000, 'the old shim to exit');
    expect((await session.listKeys()).map((k) => k.name).sort()).toEqual(['web-ec', 'web-rsa']);
    const message = Buffer.from('after the reload');
    expect(verifies('RSA_PKCS1_SHA256', rsa, message, await session.sign({ name: 'web-rsa' }, 'RSA_PKCS1_SHA256', { message }))).toBe(true);
    await expect(session.sign({ name: 'web-rsa-pss' }, 'RSA_PSS_SHA256', { message })).rejects.toMatchObject({ code: 'KEY_NOT_FOUND' });
  });

  test('SIGTERM: keylessd exits 0 and its shim with it', async () => {
    session.close();
    const exited = new Promise<number | null>((resolve) => daemon.once('exit', resolve));
    daemon.kill('SIGTERM');
    expect(await exited).toBe(0);
    await until(() => winePids('keyless-cng-shim').length === 0, 10_000, 'the shim to exit');
  });
});
