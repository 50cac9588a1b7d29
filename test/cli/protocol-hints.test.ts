import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { generateKeyPairSync } from 'node:crypto';
import { issueCertificate } from '../../src/pki/certificates';
import { startDaemon, writeKeyDir, type RunningDaemon } from '../helpers/daemon';
import { makeTestPki } from '../helpers/pki';
import { keylessctl } from '../helpers/run';

const ctl = (args: string[]) => keylessctl(args);


let d: RunningDaemon;
let credentials: string[];
let v1: string;
let compat: string;

beforeAll(async () => {
  // A server certificate for 127.0.0.1 and keys.test only: no "localhost" to fall back on.
  const pki = await makeTestPki();
  const server = await issueCertificate(pki.ca, 'server', { commonName: 'keys.test', dnsNames: ['keys.test'], ipAddresses: ['127.0.0.1'], days: 2 });
  writeFileSync(pki.files.serverCert, server.certPem);
  writeFileSync(pki.files.serverKey, server.keyPem);
  writeFileSync(join(pki.dir, 'client.crt'), pki.client.certPem);
  writeFileSync(join(pki.dir, 'client.key'), pki.client.keyPem);
  credentials = ['--ca', pki.files.caCert, '--client-cert', join(pki.dir, 'client.crt'), '--client-key', join(pki.dir, 'client.key')];
  d = await startDaemon({ backends: [{ type: 'file', dir: writeKeyDir([{ name: 'k', key: generateKeyPairSync('ed25519').privateKey }]) }], compat: { enabled: true } }, pki);
  v1 = `127.0.0.1:${d.addresses.v1.port}`;
  compat = `127.0.0.1:${d.addresses.compat!.port}`;
});
afterAll(() => d?.stop());

describe('--protocol cloudflare honours the server name', () => {
  test('an IP address is checked against the certificate IP SANs (no "localhost" forced)', async () => {
    const result = await ctl(['ping', '--protocol', 'cloudflare', '--server', compat, ...credentials]);
    expect(result.stderr).toBe('');
    expect(result.status).toBe(0);
  });

  test('--servername is the name checked', async () => {
    expect((await ctl(['ping', '--protocol', 'cloudflare', '--server', compat, '--servername', 'keys.test', ...credentials])).status).toBe(0);
    const wrong = await ctl(['ping', '--protocol', 'cloudflare', '--server', compat, '--servername', 'other.test', ...credentials]);
    expect(wrong.status).toBe(3);
    expect(wrong.stderr).toContain(`the server certificate of ${compat} does not name that host`);
    expect(wrong.stderr).toContain('other.test');
  });
});

describe('the wrong protocol for a port is named within a second, not after a timeout', () => {
  test('keyless.v1 at the compatibility port', async () => {
    const result = await ctl(['ping', '--server', compat, '--timeout-ms', '60000', ...credentials]);
    expect(result.status).toBe(3);
    expect(result.stderr).toBe(
      `keylessctl: wss://${compat}/v1 is a Cloudflare Keyless protocol port (the compatibility port), not keyless.v1: add --protocol cloudflare, or connect to the keyless.v1 port (2408 by default)\n`,
    );
  });

  test('the Cloudflare protocol at the keyless.v1 port', async () => {
    const result = await ctl(['ping', '--protocol', 'cloudflare', '--server', v1, '--timeout-ms', '60000', ...credentials]);
    expect(result.status).toBe(3);
    expect(result.stderr).toBe(
      `keylessctl: ${v1} speaks keyless.v1 (HTTPS/WebSocket), not the Cloudflare Keyless protocol: drop --protocol cloudflare, or connect to the compatibility port (2407 by default)\n`,
    );
  });

  test('bench with the Cloudflare protocol at the keyless.v1 port says so and exits 3', async () => {
    const result = await ctl(['bench', '--protocol', 'cloudflare', '--operation', 'ping', '--sessions', '1', '--duration', '30', '--warmup', '0', '--server', v1, ...credentials]);
    expect(result.status).toBe(3);
    expect(result.stdout).toContain('connection errors: 1 x the server speaks keyless.v1 (HTTPS/WebSocket), not the Cloudflare protocol: drop --protocol cloudflare');
  });

  test('bench with keyless.v1 at the compatibility port says so and exits 3', async () => {
    const result = await ctl(['bench', '--operation', 'ping', '--sessions', '1', '--duration', '30', '--warmup', '0', '--server', compat, ...credentials]);
    expect(result.status).toBe(3);
    expect(result.stderr).toContain('is a Cloudflare Keyless protocol port (the compatibility port), not keyless.v1: add --protocol cloudflare');
  });
});
