import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { connect as tlsConnect } from 'node:tls';
import { WebSocket } from 'ws';
import { KeylessSession } from '../../src/client/session';
import { ConnectionError } from '../../src/client/errors';
import { decodeResponse, encodeRequest, pb } from '../../src/protocols/v1/codec';
import { startDaemon, writeKeyDir, type RunningDaemon } from '../helpers/daemon';
import { FaultSwitch } from '../helpers/faulty-backend';
import { until } from '../helpers/until';

let server: RunningDaemon;
let keyDir: string;

beforeAll(async () => {
  keyDir = writeKeyDir([
    { name: 'p256', key: generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey },
    { name: 'rsa4096', key: generateKeyPairSync('rsa', { modulusLength: 4096 }).privateKey },
  ]);
  server = await startDaemon({ backends: [{ type: 'file', dir: keyDir }], limits: { max_frame_bytes: 4096 } });
});
afterAll(() => server.stop());

async function metric(name: string): Promise<string> {
  const text = await (await fetch(`http://127.0.0.1:${server.addresses.metrics!.port}/metrics`)).text();
  return text
    .split('\n')
    .filter((line) => line.startsWith(name))
    .join('\n');
}

function rawSocket(options: { protocol?: string | string[]; path?: string; cert?: boolean } = {}): WebSocket {
  const { pki } = server;
  return new WebSocket(`wss://127.0.0.1:${server.addresses.v1.port}${options.path ?? '/v1'}`, options.protocol ?? 'keyless.v1', {
    ca: pki.ca.certPem,
    ...(options.cert === false ? {} : { cert: pki.client.certPem, key: pki.client.keyPem }),
  });
}

function closed(ws: WebSocket): Promise<{ code: number }> {
  return new Promise((resolve) => ws.on('close', (code) => resolve({ code })));
}

function opened(ws: WebSocket): Promise<void> {
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
}

describe('who may connect', () => {
  test('a client with no certificate cannot complete the handshake', async () => {
    const { pki } = server;
    const attempt = KeylessSession.connect({ url: server.url, ca: Buffer.from(pki.ca.certPem), cert: undefined as never, key: undefined as never });
    await expect(attempt).rejects.toBeInstanceOf(ConnectionError);
    expect(await metric('keyless_tls_handshake_failures_total{listener="keyless.v1",reason="no_certificate"}')).toMatch(/ [1-9]\d*$/);
  });

  test('a client certificate from another CA is refused during the handshake', async () => {
    const attempt = server.connect(server.pki.stranger);
    await expect(attempt).rejects.toThrow(/refused the client certificate/);
    expect(await metric('keyless_tls_handshake_failures_total{listener="keyless.v1",reason="unknown_ca"}')).toMatch(/ [1-9]\d*$/);
  });

  test('TLS below 1.3 is refused by default', async () => {
    const { pki } = server;
    const socket = tlsConnect({ host: '127.0.0.1', port: server.addresses.v1.port, ca: pki.ca.certPem, cert: pki.client.certPem, key: pki.client.keyPem, maxVersion: 'TLSv1.2', servername: 'localhost' });
    await expect(new Promise((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject))).rejects.toThrow(/protocol version|alert/i);
  });

  test('a plain ws:// connection is refused', async () => {
    const ws = new WebSocket(`ws://127.0.0.1:${server.addresses.v1.port}/v1`, 'keyless.v1');
    ws.on('error', () => {});
    await expect(opened(ws)).rejects.toBeDefined();
  });

  test('an upgrade without the keyless.v1 subprotocol, or on another path, is refused with 400', async () => {
    for (const options of [{ protocol: [] as string[] }, { protocol: 'other.v1' }, { path: '/v2' }]) {
      const ws = rawSocket(options);
      await expect(opened(ws)).rejects.toThrow(/Unexpected server response: 400/);
    }
    expect(await metric('keyless_connections_refused_total{listener="keyless.v1",reason="bad_upgrade"}')).toMatch(/ 3$/);
  });

  test('TLS sessions resume: a reconnect skips the full handshake', async () => {
    const { pki } = server;
    const first = tlsConnect({ host: '127.0.0.1', port: server.addresses.v1.port, ca: pki.ca.certPem, cert: pki.client.certPem, key: pki.client.keyPem, servername: 'localhost' });
    const ticket = await new Promise<Buffer>((resolve) => first.once('session', resolve));
    first.end();
    const second = tlsConnect({ host: '127.0.0.1', port: server.addresses.v1.port, ca: pki.ca.certPem, cert: pki.client.certPem, key: pki.client.keyPem, servername: 'localhost', session: ticket });
    await new Promise((resolve) => second.once('secureConnect', resolve));
    expect(second.isSessionReused()).toBe(true);
    second.end();
  });
});

describe('one session, many requests', () => {
  test('2,000 pipelined requests are all answered, each with its own id', async () => {
    const session = await server.connect();
    const messages = Array.from({ length: 2000 }, (_, i) => Buffer.from(`message ${i}`));
    const answers = await Promise.all(messages.map((message) => session.request({ sign: { key: { name: 'p256' }, algorithm: pb.SignatureAlgorithm.ECDSA_SHA256, message } })));
    expect(answers.every((a) => a.result === 'signature')).toBe(true);
    expect(new Set(answers.map((a) => Number(a.id))).size).toBe(2000);
    await session.close();
  });

  test('a slow request does not hold back fast requests sent after it', async () => {
    // The slow call is held in the backend until the fast ones are answered, so the order is
    // decided by the server's design, not by how fast this machine signs.
    const faults = new FaultSwitch();
    faults.mode = 'hang';
    faults.onlyKeys = new Set(['rsa4096']);
    const held = await startDaemon({ backends: [{ type: 'file', dir: keyDir }] }, server.pki, faults.factory);
    const session = await held.connect();
    const digest = createHash('sha256').update('x').digest();
    let slowDone = false;
    const slow = session.sign({ name: 'rsa4096' }, 'RSA_PKCS1_SHA256', { digest }).then(() => (slowDone = true));
    await until(() => faults.hungCalls === 1, 30_000, 'the RSA-4096 call to reach the backend');
    await Promise.all(Array.from({ length: 20 }, () => session.sign({ name: 'p256' }, 'ECDSA_SHA256', { digest })));
    expect(slowDone).toBe(false);
    faults.release();
    await slow;
    await session.close();
    await held.stop();
  });

  test('beyond the in-flight limit requests are answered OVERLOADED at once', async () => {
    const limited = await startDaemon(
      { backends: [{ type: 'file', dir: writeKeyDir([{ name: 'rsa4096', key: generateKeyPairSync('rsa', { modulusLength: 4096 }).privateKey }]) }], limits: { max_inflight_per_session: 2 } },
      server.pki,
    );
    const session = await limited.connect();
    const digest = createHash('sha256').update('x').digest();
    const results = await Promise.all(Array.from({ length: 10 }, () => session.sign({ name: 'rsa4096' }, 'RSA_PKCS1_SHA256', { digest }).then(() => 'ok', (e) => e.code)));
    expect(results.filter((r) => r === 'OVERLOADED').length).toBeGreaterThanOrEqual(1);
    expect(results.filter((r) => r === 'ok').length).toBeGreaterThanOrEqual(2);
    await session.close();
    await limited.stop();
  });
});

describe('a bad frame closes only its own session', () => {
  test.each([
    ['garbage bytes', (ws: WebSocket) => ws.send(Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f])), 1002],
    ['a text frame', (ws: WebSocket) => ws.send('{"id":1}'), 1002],
    ['an oversized frame', (ws: WebSocket) => ws.send(randomBytes(8192)), 1009],
  ])('%s', async (_what, misbehave, code) => {
    const bystander = await server.connect();
    const offender = rawSocket();
    await opened(offender);
    const closing = closed(offender);
    misbehave(offender);
    expect((await closing).code).toBe(code);
    expect(await bystander.ping(Buffer.from('unaffected'))).toEqual(Buffer.from('unaffected'));
    await bystander.close();
  });

  test('protocol errors are counted by kind', async () => {
    expect(await metric('keyless_protocol_errors_total{listener="keyless.v1",kind="text_frame"}')).toMatch(/ [1-9]\d*$/);
    expect(await metric('keyless_protocol_errors_total{listener="keyless.v1",kind="too_big"}')).toMatch(/ [1-9]\d*$/);
  });

  test('a raw request with an id gets a response with that id', async () => {
    const ws = rawSocket();
    await opened(ws);
    const answer = new Promise<Buffer>((resolve) => ws.once('message', (d: Buffer) => resolve(d)));
    ws.send(encodeRequest({ id: 77, ping: { payload: Buffer.from('p') } }));
    const response = decodeResponse(await answer);
    expect(Number(response.id)).toBe(77);
    expect(Buffer.from(response.pong!.payload!)).toEqual(Buffer.from('p'));
    ws.close();
  });
});

describe('health endpoints', () => {
  test('/healthz and /readyz answer 200 while serving', async () => {
    const base = `http://127.0.0.1:${server.addresses.metrics!.port}`;
    expect((await fetch(`${base}/healthz`)).status).toBe(200);
    const ready = await fetch(`${base}/readyz`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toEqual({ ready: true });
  });
});
