import { generateKeyPairSync, createPublicKey, verify } from 'node:crypto';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import { connect as tlsConnect } from 'node:tls';
import { issueCertificate } from '../../src/pki/certificates';
import { startDaemon, writeKeyDir } from '../helpers/daemon';
import { freePort } from '../helpers/ports';
import { keepBusy } from '../helpers/load';
import { GiveUp, until } from '../helpers/until';
import { KeylessSession } from '../../src/client/session';

const p256 = () => generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;

test('a reload under load swaps keys and the server certificate without failing a request', async () => {
  const dir = writeKeyDir([{ name: 'steady', key: p256() }, { name: 'leaving', key: p256() }]);
  const server = await startDaemon({ backends: [{ type: 'file', dir }] });
  const session = await server.connect();
  const message = Buffer.from('under load');
  let signed = 0;
  // Any failed request ends its loop, and so the test: a reload must not fail one.
  const load = keepBusy(8, async () => {
    await session.sign({ name: 'steady' }, 'ECDSA_SHA256', { message });
    signed++;
  });
  // A new key arrives, one leaves, and the server certificate is replaced.
  const arriving = p256();
  writeFileSync(join(dir, 'arriving.pem'), arriving.export({ format: 'pem', type: 'pkcs8' }));
  rmSync(join(dir, 'leaving.pem'));
  const renewed = await issueCertificate(server.pki.ca, 'server', { commonName: 'renewed', dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'], days: 2 });
  writeFileSync(server.pki.files.serverCert, renewed.certPem);
  writeFileSync(server.pki.files.serverKey, renewed.keyPem);
  const before = signed;
  expect(await server.reload({ backends: [{ type: 'file', dir }] })).toBe(true);
  await until(() => (load.assertRunning(), signed >= before + 200), 30_000, '200 signatures after the reload');
  await load.stop();

  const signature = await session.sign({ name: 'arriving' }, 'ECDSA_SHA256', { message });
  expect(verify('sha256', message, createPublicKey(arriving), signature)).toBe(true);
  await expect(session.sign({ name: 'leaving' }, 'ECDSA_SHA256', { message })).rejects.toMatchObject({ code: 'KEY_NOT_FOUND' });

  // New handshakes get the new certificate; the old session was never dropped.
  const socket = tlsConnect({ host: '127.0.0.1', port: server.addresses.v1.port, ca: server.pki.ca.certPem, cert: server.pki.client.certPem, key: server.pki.client.keyPem, servername: 'localhost' });
  await new Promise((resolve) => socket.once('secureConnect', resolve));
  expect(new X509Certificate(socket.getPeerCertificate().raw).subject).toContain('CN=renewed');
  socket.end();
  expect(await session.ping(Buffer.from('same session'))).toEqual(Buffer.from('same session'));
  await session.close();
  await server.stop();
});

test('a reload that fails keeps the running configuration and says why', async () => {
  const dir = writeKeyDir([{ name: 'kept', key: p256() }]);
  const server = await startDaemon({ backends: [{ type: 'file', dir }] });
  const session = await server.connect();
  expect(await server.reload({ backends: [{ type: 'file', dir: '/nonexistent/keys' }] })).toBe(false);
  expect(await server.reload({ backends: [{ type: 'file', dir }], tls: { cert: '/nonexistent.crt', key: 'x', client_ca: 'y' } })).toBe(false);
  await session.sign({ name: 'kept' }, 'ECDSA_SHA256', { message: Buffer.from('still serving') });
  const metrics = await (await fetch(`http://127.0.0.1:${server.addresses.metrics!.port}/metrics`)).text();
  expect(metrics).toMatch(/^keyless_config_last_reload_successful 0$/m);
  await session.close();
  await server.stop();
});

test('SIGHUP reloads a running keylessd, SIGTERM drains and exits 0', async () => {
  const stateDir = join(mkdtempSync(join(tmpdir(), 'keylessd-hup-')), 'state');
  const port = await freePort();
  const child = spawn(process.execPath, [join(__dirname, '..', '..', 'dist', 'src', 'cli', 'keylessd.js'), '--state-dir', stateDir, '--port', String(port), '--metrics-port', String(await freePort())], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (out += c.toString()));
  const waitFor = (text: string) =>
    until(
      () => {
        if (child.exitCode !== null) throw new GiveUp(`keylessd exited ${child.exitCode}: ${out}`);
        return out.includes(text);
      },
      60_000,
      () => `keylessd to log "${text}":\n${out}`,
    );
  await waitFor('Sign with a demo key');
  const added = p256();
  writeFileSync(join(stateDir, 'keys', 'added-by-operator.pem'), added.export({ format: 'pem', type: 'pkcs8' }));
  child.kill('SIGHUP');
  await waitFor('reloaded: serving 4 keys');
  const pki = (name: string) => readFileSync(join(stateDir, 'pki', name));
  const session = await KeylessSession.connect({ url: `wss://127.0.0.1:${port}/v1`, ca: pki('ca.crt'), cert: pki('client.crt'), key: pki('client.key') });
  const signature = await session.sign({ name: 'added-by-operator' }, 'ECDSA_SHA256', { message: Buffer.from('hup') });
  expect(verify('sha256', Buffer.from('hup'), createPublicKey(added), signature)).toBe(true);
  const closed = new Promise<number>((resolve) => session.once('close', resolve));
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  expect(await closed).toBe(1001);
  expect(await exited).toBe(0);
});

describe('a reload that fails leaves the old state serving, says why, and the next one works', () => {
  const metric = async (server: Awaited<ReturnType<typeof startDaemon>>, name: string) => {
    const text = await (await fetch(`http://127.0.0.1:${server.addresses.metrics!.port}/metrics`)).text();
    return Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)![1]);
  };

  test.each([
    ['an invalid config', (_dir: string, _pki: string) => ({ limits: { max_sessions: 'many' } })],
    ['an unreadable server certificate', (dir: string) => ({ backends: [{ type: 'file', dir }], tls: { cert: '/nonexistent/server.crt' } })],
    [
      'a CRL that is not a CRL',
      (dir: string, pkiDir: string) => {
        writeFileSync(join(pkiDir, 'bad.crl'), '-----BEGIN X509 CRL-----\nbm90IGEgQ1JM\n-----END X509 CRL-----\n');
        return { backends: [{ type: 'file', dir }], tls: { crl: join(pkiDir, 'bad.crl') } };
      },
    ],
    ['a backend that cannot open', (dir: string) => ({ backends: [{ type: 'file', dir }, { type: 'pkcs11', name: 'hsm', uri: 'pkcs11:token=none?module-path=/nonexistent/module.so&pin-value=1' }] })],
  ])('%s', async (_what, broken) => {
    const dir = writeKeyDir([{ name: 'old', key: p256() }]);
    const server = await startDaemon({ backends: [{ type: 'file', dir }] });
    const session = await server.connect();
    const message = Buffer.from('still here');
    const loadedAt = await metric(server, 'keyless_config_last_reload_timestamp_seconds');

    const newDir = writeKeyDir([{ name: 'new', key: p256() }]);
    expect(await server.reload(broken(newDir, server.pki.dir))).toBe(false);
    // Twice: a failed reload must not poison the next one (it used to end the process).
    expect(await server.reload(broken(newDir, server.pki.dir))).toBe(false);
    await session.sign({ name: 'old' }, 'ECDSA_SHA256', { message });
    await expect(session.sign({ name: 'new' }, 'ECDSA_SHA256', { message })).rejects.toMatchObject({ code: 'KEY_NOT_FOUND' });
    const fresh = await server.connect();
    await fresh.sign({ name: 'old' }, 'ECDSA_SHA256', { message });
    await fresh.close();
    expect(await metric(server, 'keyless_config_last_reload_successful')).toBe(0);
    expect(await metric(server, 'keyless_config_reload_failures_total')).toBe(2);
    expect(await metric(server, 'keyless_config_last_reload_timestamp_seconds')).toBe(loadedAt);

    expect(await server.reload({ backends: [{ type: 'file', dir: newDir }] })).toBe(true);
    await session.sign({ name: 'new' }, 'ECDSA_SHA256', { message });
    expect(await metric(server, 'keyless_config_last_reload_successful')).toBe(1);
    await session.close();
    await server.stop();
  });
});
