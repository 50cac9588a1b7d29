import { spawn, type ChildProcess } from 'node:child_process';
import { X509Certificate, generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import 'reflect-metadata';
import { X509Crl } from '@peculiar/x509';
import { writeKeyDir } from '../helpers/daemon';
import { freePort } from '../helpers/ports';
import { KEYLESSD, keylessctl } from '../helpers/run';
import { until } from '../helpers/until';

const keylessd = KEYLESSD;
const ctl = (args: string[]) => keylessctl(args);


let dir: string;
let daemon: ChildProcess | undefined;
let log = '';
afterAll(() => {
  if (daemon?.exitCode === null) daemon.kill('SIGKILL');
});

test('add-client issues another edge certificate from the same CA, with the OU given, and starts an empty CRL', async () => {
  dir = join(mkdtempSync(join(tmpdir(), 'keylessctl-pki-')), 'pki');
  expect((await ctl(['pki', 'init', dir])).status).toBe(0);
  const added = await ctl(['pki', 'add-client', 'edge-fra1', '--dir', dir, '--ou', 'eu', '--org', 'Example', '--json']);
  expect(added.stderr).toBe('');
  const issued = JSON.parse(added.stdout);
  expect(issued).toMatchObject({ cert: join(dir, 'clients', 'edge-fra1.crt'), key: join(dir, 'clients', 'edge-fra1.key') });
  const cert = new X509Certificate(readFileSync(issued.cert));
  const ca = new X509Certificate(readFileSync(join(dir, 'ca.crt')));
  expect(cert.verify(ca.publicKey)).toBe(true);
  expect(cert.subject.split('\n').sort()).toEqual(['CN=edge-fra1', 'O=Example', 'OU=eu']);
  expect(cert.serialNumber.toLowerCase().replace(/^0+(?=.)/, '')).toBe(issued.serial);
  const crl = new X509Crl(readFileSync(join(dir, 'crl.pem'), 'utf8'));
  expect(crl.entries).toHaveLength(0);
  const again = await ctl(['pki', 'add-client', 'edge-fra1', '--dir', dir]);
  expect(again.status).toBe(1);
  expect(again.stderr).toContain('already exists');
});

test('revoke + SIGHUP: the revoked client is refused, the new one works, with no restart', async () => {
  const [port, metricsPort] = [await freePort(), await freePort()];
  const keys = writeKeyDir([{ name: 'k', key: generateKeyPairSync('ed25519').privateKey }]);
  const config = join(dir, 'keylessd.yaml');
  writeFileSync(
    config,
    `listen: {port: ${port}}\nmetrics: {port: ${metricsPort}}\ntls: {cert: server.crt, key: server.key, client_ca: ca.crt, crl: crl.pem}\naudit: {path: audit.log}\nbackends: [{type: file, dir: ${keys}}]\n`,
  );
  expect((await ctl(['pki', 'revoke', '--dir', dir, 'nothing-like-this'])).status).toBe(1);
  daemon = spawn(process.execPath, [keylessd, '--config', config], { stdio: ['ignore', 'pipe', 'pipe'] });
  daemon.stdout!.on('data', (c: Buffer) => (log += c.toString()));
  daemon.stderr!.on('data', (c: Buffer) => (log += c.toString()));
  await until(() => log.includes('keylessd serving') || daemon!.exitCode !== null, 60_000, 'keylessd to serve');
  expect(daemon.exitCode).toBeNull();

  const as = (cert: string, key: string) => ['ping', '--server', `127.0.0.1:${port}`, '--ca', join(dir, 'ca.crt'), '--client-cert', cert, '--client-key', key];
  const old = as(join(dir, 'client.crt'), join(dir, 'client.key'));
  const fresh = as(join(dir, 'clients', 'edge-fra1.crt'), join(dir, 'clients', 'edge-fra1.key'));
  expect((await ctl(old)).status).toBe(0);
  expect((await ctl(fresh)).status).toBe(0);

  const revoked = await ctl(['pki', 'revoke', join(dir, 'client.crt'), '--dir', dir]);
  expect(revoked.status).toBe(0);
  expect(revoked.stdout).toMatch(/^revoked: .*client\.crt.*, serial [0-9a-f]+\n/);
  expect(new X509Crl(readFileSync(join(dir, 'crl.pem'), 'utf8')).entries).toHaveLength(1);
  expect((await ctl(['pki', 'revoke', join(dir, 'client.crt'), '--dir', dir])).stdout).toMatch(/^already revoked/);

  const reloads = (log.match(/"msg":"reloaded/g) ?? []).length;
  daemon.kill('SIGHUP');
  await until(() => (log.match(/"msg":"reloaded/g) ?? []).length > reloads, 30_000, `keylessd to reload:\n${log}`);
  const refused = await ctl(old);
  expect(refused.status).toBe(3);
  expect(refused.stderr).toContain('refused the client certificate');
  expect(await ctl(fresh)).toMatchObject({ status: 0, stderr: '' });
});

test('a CRL past its next update is a problem naming tls.crl (for --check-config, startup and reload)', async () => {
  // A CRL valid for one day, checked as if two days had passed, is what an operator who forgot to refresh it has.
  expect((await ctl(['pki', 'crl', '--dir', dir, '--crl-days', '1'])).status).toBe(0);
  const crl = new X509Crl(readFileSync(join(dir, 'crl.pem'), 'utf8'));
  expect(crl.entries).toHaveLength(1);
  const { certificateValidityProblems } = await import('../../src/config/preflight');
  const problems = certificateValidityProblems({ cert: join(dir, 'server.crt'), client_ca: join(dir, 'ca.crt'), crl: join(dir, 'crl.pem') }, new Date(Date.now() + 2 * 86_400_000));
  expect(problems.map((p) => p.message)).toEqual([expect.stringMatching(/^tls\.crl: the CRL .*crl\.pem is past its next update/)]);
});
