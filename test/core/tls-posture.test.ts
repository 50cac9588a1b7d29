import { generateKeyPairSync } from 'node:crypto';
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import { issueCertificate } from '../../src/pki/certificates';
import { startDaemon, writeKeyDir, type RunningDaemon } from '../helpers/daemon';

let tls13: RunningDaemon;
let tls12: RunningDaemon;

beforeAll(async () => {
  const backends = [{ type: 'file', dir: writeKeyDir([{ name: 'k', key: generateKeyPairSync('ed25519').privateKey }]) }];
  tls13 = await startDaemon({ backends });
  tls12 = await startDaemon({ backends, tls: { min_version: 'TLSv1.2' } }, tls13.pki);
});
afterAll(async () => {
  await tls13.stop();
  await tls12.stop();
});

function handshake(server: RunningDaemon, options: ConnectionOptions): Promise<TLSSocket> {
  const { pki } = server;
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: '127.0.0.1', port: server.addresses.v1.port, servername: 'localhost', ca: pki.ca.certPem, cert: pki.client.certPem, key: pki.client.keyPem, ...options });
    socket.once('secureConnect', () => resolve(socket));
    socket.once('error', reject);
  });
}

test('keyless.v1 speaks TLS 1.3 by default and refuses 1.2', async () => {
  const socket = await handshake(tls13, {});
  expect(socket.getProtocol()).toBe('TLSv1.3');
  socket.end();
  await expect(handshake(tls13, { maxVersion: 'TLSv1.2' })).rejects.toThrow(/protocol version|alert/i);
});

test('where TLS 1.2 is configured, only ECDHE with an AEAD cipher is accepted', async () => {
  const good = await handshake(tls12, { maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-AES128-GCM-SHA256' });
  expect(good.getProtocol()).toBe('TLSv1.2');
  expect(good.getCipher().name).toBe('ECDHE-ECDSA-AES128-GCM-SHA256');
  good.end();
  const chacha = await handshake(tls12, { maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-CHACHA20-POLY1305' });
  chacha.end();
  for (const weak of ['ECDHE-ECDSA-AES128-SHA', 'ECDHE-ECDSA-AES256-SHA384', 'AES128-GCM-SHA256', 'DHE-RSA-AES128-GCM-SHA256']) {
    await expect(handshake(tls12, { maxVersion: 'TLSv1.2', ciphers: weak })).rejects.toThrow(/handshake failure|no cipher|alert/i);
  }
  await expect(handshake(tls12, { maxVersion: 'TLSv1.1', minVersion: 'TLSv1' })).rejects.toThrow(/protocol version|alert|no protocols/i);
});

test('TLS 1.2 renegotiation is refused', async () => {
  const socket = await handshake(tls12, { maxVersion: 'TLSv1.2' });
  socket.on('error', () => {});
  const outcome = await new Promise<Error | null>((resolve) => {
    socket.once('close', () => resolve(new Error('closed')));
    socket.renegotiate({}, (err) => resolve(err));
    // A renegotiation handshake only progresses while data flows.
    socket.write('GET / HTTP/1.1\r\nHost: localhost\r\n\r\n');
  });
  expect(outcome).toBeInstanceOf(Error);
  socket.destroy();
});

test('an expired client certificate is refused and counted as expired', async () => {
  const expired = await issueCertificate(tls13.pki.ca, 'client', { commonName: 'old edge', days: 1, notBefore: new Date(Date.now() - 10 * 86_400_000) });
  await expect(tls13.connect(expired)).rejects.toThrow();
  const text = await (await fetch(`http://127.0.0.1:${tls13.addresses.metrics!.port}/metrics`)).text();
  expect(text).toMatch(/^keyless_tls_handshake_failures_total\{listener="keyless.v1",reason="expired"\} 1$/m);
});

test('certificate expiry times are exported before they bite', async () => {
  const text = await (await fetch(`http://127.0.0.1:${tls13.addresses.metrics!.port}/metrics`)).text();
  const serverExpiry = Number(/^keyless_certificate_expiry_timestamp_seconds\{listener="keyless.v1",role="server"\} (\S+)$/m.exec(text)![1]);
  const caExpiry = Number(/^keyless_certificate_expiry_timestamp_seconds\{listener="keyless.v1",role="client_ca"\} (\S+)$/m.exec(text)![1]);
  expect(serverExpiry).toBeGreaterThan(Date.now() / 1000);
  expect(serverExpiry).toBeLessThan(Date.now() / 1000 + 3 * 86_400);
  expect(caExpiry).toBeGreaterThan(Date.now() / 1000);
});
