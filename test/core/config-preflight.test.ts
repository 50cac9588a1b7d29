import { spawn } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { chmodSync, mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createCa, issueCertificate } from '../../src/pki/certificates';
import { writeKeyDir } from '../helpers/daemon';
import { makeTestPki, type TestPki } from '../helpers/pki';
import { freePort } from '../helpers/ports';

const cli = join(__dirname, '..', '..', 'dist', 'src', 'cli', 'keylessd.js');

function run(args: string[], until?: (out: string) => boolean): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let [stdout, stderr] = ['', ''];
    child.stdout.on('data', (c: Buffer) => {
      stdout += c.toString();
      if (until?.(stdout)) child.kill('SIGKILL');
    });
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.once('error', reject);
    child.once('exit', (status) => resolve({ status, stdout, stderr }));
  });
}

interface Setup {
  pki: TestPki;
  ports: { listen: number; metrics: number };
  file: string;
}

/** A config whose every part is right, except what `extra` (YAML lines) changes. */
async function setup(extra: Partial<Record<'tls' | 'audit' | 'backends' | 'listen', string>> = {}, pki?: TestPki): Promise<Setup> {
  const testPki = pki ?? (await makeTestPki());
  const keys = writeKeyDir([{ name: 'a', key: generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey }]);
  chmodSync(join(keys, 'a.pem'), 0o600); // as an operator should keep it: no warning in the output
  const ports = { listen: await freePort(), metrics: await freePort() };
  const file = join(testPki.dir, 'keylessd.yaml');
  writeFileSync(
    file,
    [
      extra.listen ?? `listen: {host: 127.0.0.1, port: ${ports.listen}}`,
      `metrics: {host: 127.0.0.1, port: ${ports.metrics}}`,
      extra.tls ?? 'tls: {cert: server.crt, key: server.key, client_ca: ca.crt}',
      extra.audit ?? 'audit: {path: audit.log}',
      extra.backends ?? `backends: [{type: file, dir: ${keys}}]`,
      '',
    ].join('\n'),
  );
  return { pki: testPki, ports, file };
}

async function pkiWithServer(validity: { notBefore: Date; days: number }): Promise<TestPki> {
  const pki = await makeTestPki();
  const server = await issueCertificate(pki.ca, 'server', { commonName: 'localhost', dnsNames: ['localhost'], ...validity });
  writeFileSync(pki.files.serverCert, server.certPem);
  writeFileSync(pki.files.serverKey, server.keyPem);
  return pki;
}

describe('keylessd --check-config refuses what would break at runtime, naming the field and the cause', () => {
  test('a good config passes', async () => {
    const { file } = await setup();
    const result = await run(['--check-config', file]);
    expect(result.stderr).toBe('');
    expect(result.stdout).toBe(`${file}: OK, 1 keys from 1 backend(s)\n`);
    expect(result.status).toBe(0);
  });

  test('zero keys served: a wrong passphrase leaves nothing to serve', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'keylessd-keys-'));
    const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
    writeFileSync(join(dir, 'www.pem'), key.export({ format: 'pem', type: 'pkcs8', cipher: 'aes-256-cbc', passphrase: 'right' }));
    writeFileSync(join(dir, '.pass'), 'wrong\n', { mode: 0o600 });
    const { file } = await setup({ backends: `backends: [{type: file, dir: ${dir}, passphrase_file: ${join(dir, '.pass')}}]` });
    const result = await run(['--check-config', file]);
    expect(result.status).toBe(1);
    expect(result.stderr).toContain(`keylessd: backends: no key would be served (every key was skipped: ${join(dir, 'www.pem')}: it cannot be decrypted: wrong passphrase, or the file is damaged)`);
    expect(result.stderr).not.toContain('right');
    expect(result.stdout).not.toContain('OK');
  });

  test('zero keys served: a passphrase file that cannot be read', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'keylessd-keys-'));
    const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
    writeFileSync(join(dir, 'www.pem'), key.export({ format: 'pem', type: 'pkcs8', cipher: 'aes-256-cbc', passphrase: 'right' }));
    const { file } = await setup({ backends: `backends: [{type: file, dir: ${dir}, passphrase_file: /nonexistent/pass}]` });
    const result = await run(['--check-config', file]);
    expect(result.status).toBe(1);
    expect(result.stderr).toContain('keylessd: backends: no key would be served');
    expect(result.stderr).toContain('cannot read its passphrase file /nonexistent/pass: ENOENT');
  });

  test('an expired server certificate', async () => {
    const pki = await pkiWithServer({ notBefore: new Date(Date.now() - 10 * 86_400_000), days: 2 });
    const { file } = await setup({}, pki);
    const result = await run(['--check-config', file]);
    expect(result.status).toBe(1);
    expect(result.stderr).toMatch(new RegExp(`^keylessd: tls\\.cert: the server certificate ${pki.files.serverCert} expired on \\d{4}-\\d\\d-\\d\\dT`));
  });

  test('a server certificate not yet valid', async () => {
    const pki = await pkiWithServer({ notBefore: new Date(Date.now() + 5 * 86_400_000), days: 30 });
    const { file } = await setup({}, pki);
    const result = await run(['--check-config', file]);
    expect(result.status).toBe(1);
    expect(result.stderr).toContain(`keylessd: tls.cert: the server certificate ${pki.files.serverCert} is not valid until`);
  });

  test('a server key that does not match the certificate', async () => {
    const pki = await makeTestPki();
    const other = await issueCertificate(await createCa({ commonName: 'x', days: 2 }), 'server', { commonName: 'localhost', days: 2 });
    writeFileSync(pki.files.serverKey, other.keyPem);
    const { file } = await setup({}, pki);
    const result = await run(['--check-config', file]);
    expect(result.status).toBe(1);
    expect(result.stderr).toContain(`keylessd: tls.key: ${pki.files.serverKey} is not the private key of ${pki.files.serverCert}`);
  });

  test('an audit folder that does not exist', async () => {
    const { file } = await setup({ audit: 'audit: {path: /nonexistent/keylessd/audit.log}' });
    const result = await run(['--check-config', file]);
    expect(result.status).toBe(1);
    expect(result.stderr).toBe('keylessd: audit.path: the folder of the audit log, /nonexistent/keylessd, does not exist (ENOENT); create it, writable by the service user\n');
  });

  test('an audit folder that cannot be written (even by root: sysfs refuses new files)', async () => {
    const { file } = await setup({ audit: 'audit: {path: /sys/kernel/keylessd-audit.log}' });
    const result = await run(['--check-config', file]);
    expect(result.status).toBe(1);
    expect(result.stderr).toMatch(/^keylessd: audit\.path: the folder of the audit log, \/sys\/kernel, is not writable: E(ACCES|PERM|ROFS)\n$/);
  });

  describe('a port another process holds', () => {
    let holder: Server;
    let port: number;
    beforeAll(async () => {
      holder = createServer();
      await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
      port = (holder.address() as { port: number }).port;
    });
    afterAll(() => new Promise((resolve) => holder.close(resolve)));

    test('is an error naming the field', async () => {
      const { file } = await setup({ listen: `listen: {host: 127.0.0.1, port: ${port}}` });
      const result = await run(['--check-config', file]);
      expect(result.status).toBe(1);
      expect(result.stderr).toBe(`keylessd: listen.port: 127.0.0.1:${port} is already in use (EADDRINUSE): another process, perhaps another keylessd, listens there\n`);
    });

    test('--skip-port-check leaves it out (checking a file for the keylessd that holds the port)', async () => {
      const { file } = await setup({ listen: `listen: {host: 127.0.0.1, port: ${port}}` });
      const result = await run(['--check-config', file, '--skip-port-check']);
      expect(result.status).toBe(0);
      expect(result.stdout).toContain('OK, 1 keys');
    });
  });

  test('every problem is listed, one line each', async () => {
    const pki = await pkiWithServer({ notBefore: new Date(Date.now() - 10 * 86_400_000), days: 2 });
    const { file } = await setup({ audit: 'audit: {path: /nonexistent/audit.log}' }, pki);
    const result = await run(['--check-config', file]);
    expect(result.status).toBe(1);
    const lines = result.stderr.trim().split('\n');
    expect(lines.map((l) => l.split(':')[1]!.trim())).toEqual(['tls.cert', 'audit.path']);
  });
});

test('keylessd refuses to start with an expired server certificate', async () => {
  const pki = await pkiWithServer({ notBefore: new Date(Date.now() - 10 * 86_400_000), days: 2 });
  const { file } = await setup({}, pki);
  const result = await run(['--config', file], (out) => out.includes('keylessd serving'));
  expect(result.stdout).not.toContain('keylessd serving');
  expect(result.status).toBe(1);
  expect(result.stderr).toContain(`keylessd: tls.cert: the server certificate ${pki.files.serverCert} expired on`);
});
