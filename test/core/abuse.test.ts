import { generateKeyPairSync } from 'node:crypto';
import { connect as netConnect, type Socket } from 'node:net';
import { WebSocket } from 'ws';
import { decodeResponse, encodeRequest } from '../../src/protocols/v1/codec';
import { startDaemon, writeKeyDir, type RunningDaemon } from '../helpers/daemon';
import { until } from '../helpers/until';

let server: RunningDaemon;
const SEND_BUFFER = 16 * 1024;

beforeAll(async () => {
  const dir = writeKeyDir([{ name: 'p256', key: generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey }]);
  server = await startDaemon({
    backends: [{ type: 'file', dir }],
    limits: { max_sessions: 4, max_send_buffer_bytes: SEND_BUFFER, max_inflight_per_session: 64 },
  });
});
afterAll(() => server.stop());

async function counter(name: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${server.addresses.metrics!.port}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(name));
  return line ? Number(line.split(' ').pop()) : 0;
}

test('a client that opens TCP and never finishes the TLS handshake is dropped at the deadline', async () => {
  const shortDeadline = await startDaemon(
    { backends: [{ type: 'file', dir: writeKeyDir([{ name: 'k', key: generateKeyPairSync('ed25519').privateKey }]) }], tls: { handshake_timeout_ms: 300 } },
    server.pki,
  );
  const socket = netConnect(shortDeadline.addresses.v1.port, '127.0.0.1');
  socket.on('error', () => {});
  await new Promise<void>((resolve) => socket.once('close', () => resolve()));
  const text = await (await fetch(`http://127.0.0.1:${shortDeadline.addresses.metrics!.port}/metrics`)).text();
  expect(text).toMatch(/^keyless_tls_handshake_failures_total\{listener="keyless.v1",reason="timeout"\} 1$/m);
  await shortDeadline.stop();
});

test('connections beyond max_sessions are refused and counted; the sessions already open keep working', async () => {
  const sessions = await Promise.all(Array.from({ length: 4 }, () => server.connect()));
  const refusedBefore = await counter('keyless_connections_refused_total{listener="keyless.v1",reason="max_sessions"}');
  await expect(server.connect()).rejects.toThrow();
  expect(await counter('keyless_connections_refused_total{listener="keyless.v1",reason="max_sessions"}')).toBe(refusedBefore + 1);
  expect(await sessions[0]!.ping(Buffer.from('ok'))).toEqual(Buffer.from('ok'));
  await Promise.all(sessions.map((s) => s.close()));
  await until(async () => (await counter('keyless_sessions_active{listener="keyless.v1"}')) === 0, 30_000, 'the closed sessions to be gone');
});

test('a client that sends but never reads is paused: the daemon stops reading it and its memory stays bounded', async () => {
  const { pki } = server;
  const ws = new WebSocket(server.url, 'keyless.v1', { ca: pki.ca.certPem, cert: pki.client.certPem, key: pki.client.keyPem });
  // The upgrade response comes on the connection the session keeps using.
  const upgraded = new Promise<Socket>((resolve) => ws.once('upgrade', (response) => resolve(response.socket)));
  await new Promise((resolve) => ws.once('open', resolve));
  const clientSocket = await upgraded;
  clientSocket.pause(); // never read a response
  const payload = Buffer.alloc(1024, 7);
  const total = 5000;
  for (let id = 1; id <= total; id++) ws.send(encodeRequest({ id, ping: { payload } }));

  const paused = 'keyless_sessions_paused{listener="keyless.v1"}';
  await until(async () => (await counter(paused)) === 1, 30_000, 'the daemon to stop reading the session');
  // Bounded by the send-buffer limit plus what was already in flight when it paused.
  expect(await counter('keyless_send_buffer_bytes{listener="keyless.v1"}')).toBeLessThan(SEND_BUFFER + 64 * (payload.length + 32));

  // Nothing is lost: once the client reads again, every request is answered.
  let answered = 0;
  const seen = new Set<number>();
  ws.on('message', (data: Buffer) => {
    seen.add(Number(decodeResponse(data).id));
    answered++;
  });
  clientSocket.resume();
  await until(() => answered === total, 60_000, `all ${total} requests to be answered`);
  expect(seen.size).toBe(total);
  expect(await counter(paused)).toBe(0);
  ws.close();
});
