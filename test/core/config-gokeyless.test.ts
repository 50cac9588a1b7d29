import { execFileSync, spawn } from 'node:child_process';
import { constants, createPublicKey, generateKeyPairSync, publicEncrypt, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'yaml';
import { CompatClient } from '../../src/client/compat';
import { Tag } from '../../src/protocols/compat/codec';
import { convertGokeylessConfig } from '../../src/config/gokeyless';
import { describePublicKey } from '../../src/core/crypto/keyid';
import { writeKeyDir } from '../helpers/daemon';
import { makeTestPki } from '../helpers/pki';
import { freePort } from '../helpers/ports';

const root = join(__dirname, '..', '..');
const keylessd = join(root, 'dist', 'src', 'cli', 'keylessd.js');
const keylessctl = join(root, 'dist', 'src', 'cli', 'keylessctl.js');

test('the converter keeps decrypt for the RSA keys of file stores (relative to the file), and only for them', () => {
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
  const dir = writeKeyDir([
    { name: 'www-rsa', key: rsa },
    { name: 'www-ec', key: ec },
  ]);
  const { config, notes } = convertGokeylessConfig({ auth_cert: 'a', auth_key: 'b', cloudflare_ca_cert: 'c', private_key_stores: [{ dir: '.' }, { uri: 'pkcs11:token=x' }] }, dir);
  expect(config.keys).toEqual({ 'www-rsa': { decrypt: true, decrypt_raw: true } });
  const why = notes.filter((n) => n.key === '(decrypt)').map((n) => n.why);
  expect(why[0]).toMatch(/^RSA keys www-rsa may decrypt \(decrypt: true, decrypt_raw: true\) as gokeyless allowed.*set keys\.NAME\.decrypt_raw: false/);
  expect(why[1]).toContain('RSA keys on a PKCS#11 token do not decrypt unless allowed');
});

test('a plain gokeyless.yaml serves raw RSA decryption (TLS 1.2 RSA key exchange) on the compat port, and says how to narrow it', async () => {
  const pki = await makeTestPki();
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  const keys = writeKeyDir([{ name: 'www', key: rsa }]);
  const [port, metricsPort, v1Port] = [await freePort(), await freePort(), await freePort()];
  const file = join(pki.dir, 'gokeyless.yaml');
  writeFileSync(file, `auth_cert: server.crt\nauth_key: server.key\ncloudflare_ca_cert: ca.crt\nport: ${port}\nmetrics_port: ${metricsPort}\nprivate_key_stores:\n  - dir: ${keys}\n`);

  const converted = parse(execFileSync(process.execPath, [keylessctl, 'config', 'convert', file], { stdio: ['ignore', 'pipe', 'pipe'] }).toString());
  expect(converted.keys).toEqual({ www: { decrypt: true, decrypt_raw: true } });

  const daemon = spawn(process.execPath, [keylessd, '--config', file, '--port', String(v1Port)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  daemon.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  try {
    await new Promise<void>((resolve, reject) => {
      daemon.stdout!.on('data', (c: Buffer) => c.toString().includes('keylessd serving') && resolve());
      daemon.once('exit', (code) => reject(new Error(`keylessd exited ${code}: ${stderr}`)));
    });
    expect(stderr).toContain(`keylessd: ${file} looks like a gokeyless.yaml: (decrypt): RSA keys www may decrypt (decrypt: true, decrypt_raw: true) as gokeyless allowed`);
    const client = await CompatClient.connect({ host: '127.0.0.1', port, servername: 'localhost', ca: Buffer.from(pki.ca.certPem), cert: Buffer.from(pki.client.certPem), key: Buffer.from(pki.client.keyPem), maxVersion: 'TLSv1.2' });
    try {
      // What an edge sends for a TLS 1.2 RSA key exchange: the premaster secret, PKCS#1 v1.5 encrypted.
      const premaster = Buffer.concat([Buffer.from([3, 3]), randomBytes(46)]);
      const ski = describePublicKey(createPublicKey(rsa).export({ format: 'der', type: 'spki' })).ski;
      const answer = await client.request(0x01, publicEncrypt({ key: createPublicKey(rsa), padding: constants.RSA_PKCS1_PADDING }, premaster), [[Tag.ski, ski]]);
      expect(answer.opcode).toBe(0xf0);
      expect(answer.payload.subarray(256 - 48)).toEqual(premaster);
    } finally {
      client.close();
    }
  } finally {
    const exited = new Promise((resolve) => daemon.once('exit', resolve));
    daemon.kill('SIGTERM');
    await exited;
  }
});
