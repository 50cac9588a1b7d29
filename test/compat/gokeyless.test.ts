import { execFileSync, spawn } from 'node:child_process';
import { createPublicKey, generateKeyPairSync, verify } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CompatClient } from '../../src/client/compat';
import { Tag } from '../../src/protocols/compat/codec';
import { hashMessage } from '../../src/core/crypto/hashes';
import { describePublicKey } from '../../src/core/crypto/keyid';
import { makeTestPki } from '../helpers/pki';
import { writeKeyDir } from '../helpers/daemon';
import { freePort } from '../helpers/ports';

const root = join(__dirname, '..', '..');
const keylessd = join(root, 'dist', 'src', 'cli', 'keylessd.js');
const keylessctl = join(root, 'dist', 'src', 'cli', 'keylessctl.js');

test('a gokeyless.yaml is converted with notes, and keylessd serves it unchanged to a Cloudflare-protocol edge', async () => {
  const pki = await makeTestPki();
  const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
  const keys = writeKeyDir([{ name: 'www', key }]);
  const [port, metricsPort, v1Port] = [await freePort(), await freePort(), await freePort()];
  const file = join(pki.dir, 'gokeyless.yaml');
  const fixture = readFileSync(join(__dirname, 'fixtures', 'gokeyless.yaml'), 'utf8')
    .replace('port: PORT', `port: ${port}`)
    .replace('metrics_port: METRICS_PORT', `metrics_port: ${metricsPort}`)
    .replace('dir: KEYS_DIR', `dir: ${keys}`);
  writeFileSync(file, fixture);

  const converted = execFileSync(process.execPath, [keylessctl, 'config', 'convert', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  expect(converted.toString()).toContain(`port: ${port}`);
  expect(converted.toString()).toContain('level: info');
  writeFileSync(join(pki.dir, 'keylessd.yaml'), converted);
  expect(execFileSync(process.execPath, [keylessd, '--skip-port-check', '--check-config', join(pki.dir, 'keylessd.yaml')]).toString()).toContain('OK, 1 keys from 1 backend(s)');

  const daemon = spawn(process.execPath, [keylessd, '--config', file, '--port', String(v1Port)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  daemon.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  await new Promise<void>((resolve, reject) => {
    daemon.stdout!.on('data', (c: Buffer) => c.toString().includes('keylessd serving') && resolve());
    daemon.once('exit', (code) => reject(new Error(`keylessd exited ${code}: ${stderr}`)));
  });
  expect(stderr).toContain('hostname: keylessd does not register with the Cloudflare API');
  expect(stderr).toContain('origin_ca_api_key: keylessd does not provision certificates');
  expect(stderr).toContain('frobnicate: not a gokeyless setting keylessd knows');

  const client = await CompatClient.connect({ host: '127.0.0.1', port, servername: 'localhost', ca: Buffer.from(pki.ca.certPem), cert: Buffer.from(pki.client.certPem), key: Buffer.from(pki.client.keyPem), maxVersion: 'TLSv1.2' });
  const message = Buffer.from('from an unchanged edge');
  const ski = describePublicKey(createPublicKey(key).export({ format: 'der', type: 'spki' })).ski;
  const answer = await client.request(0x15, hashMessage('sha256', message), [[Tag.ski, ski]]);
  expect(verify('sha256', message, createPublicKey(key), answer.payload)).toBe(true);
  client.close();
  expect((await fetch(`http://127.0.0.1:${metricsPort}/healthz`)).status).toBe(200);
  const exited = new Promise((resolve) => daemon.once('exit', resolve));
  daemon.kill('SIGTERM');
  expect(await exited).toBe(0);
});
