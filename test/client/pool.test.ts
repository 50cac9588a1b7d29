import { createHash, createPublicKey, generateKeyPairSync, verify } from 'node:crypto';
import { createServer } from 'node:https';
import { connect as netConnect, createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import { WebSocketServer } from 'ws';
import { PoolBusyError } from '../../src/client/errors';
import { KeylessPool } from '../../src/client/pool';
import { TimeoutError } from '../../src/errors';
import { decodeResponse, encodeRequest, errorCodeName, pb } from '../../src/protocols/v1/codec';
import { makeTestPki, type TestPki } from '../helpers/pki';
import { freePort } from '../helpers/ports';
import { startDaemon, writeKeyDir, type RunningDaemon } from '../helpers/daemon';
import { keepBusy } from '../helpers/load';
import { until } from '../helpers/until';

const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
const message = Buffer.from('pool');
let pki: TestPki;
let keys: string;

beforeAll(async () => {
  pki = await makeTestPki();
  keys = writeKeyDir([{ name: 'k', key }]);
});

const serve = (port?: number) => startDaemon({ backends: [{ type: 'file', dir: keys }], ...(port ? { listen: { port } } : {}) }, pki);
const pool = (urls: string[], extra: Partial<ConstructorParameters<typeof KeylessPool>[0]> = {}) =>
  new KeylessPool({ servers: urls.map((url) => ({ url, servername: 'localhost' })), ca: Buffer.from(pki.ca.certPem), cert: Buffer.from(pki.client.certPem), key: Buffer.from(pki.client.keyPem), initialBackoffMs: 20, maxBackoffMs: 200, ...extra });
const ok = (signature: Buffer) => verify('sha256', message, createPublicKey(key), signature);

test('with one of two servers down, every request is served by the other and the dead one is set aside', async () => {
  const up = await serve();
  const down = `wss://127.0.0.1:${await freePort()}/v1`;
  const client = pool([down, up.url], { failuresBeforeSetAside: 2 });
  await client.ready();
  const signatures = await Promise.all(Array.from({ length: 200 }, () => client.sign({ name: 'k' }, 'ECDSA_SHA256', { message })));
  expect(signatures.every(ok)).toBe(true);
  await until(() => client.status()[0]!.setAside, 30_000, 'the failing server to be set aside');
  expect(client.status()).toEqual([
    { url: down, open: 0, resumed: 0, setAside: true },
    { url: up.url, open: 2, resumed: 0, setAside: false },
  ]);
  await client.close();
  await up.stop();
});

test('a server restarted under load: requests fail over to the other server, and the pool reconnects by itself', async () => {
  const port = await freePort();
  let first: RunningDaemon = await serve(port);
  const second = await serve();
  const client = pool([first.url, second.url], { setAsideMs: 300 });
  await client.ready();
  await until(() => client.status().every((s) => s.open >= 2), 30_000, 'two open sessions to every server');
  let served = 0;
  // Any failed request ends its loop, and so the test: the pool must hide the restart.
  const load = keepBusy(8, async () => {
    if (!ok(await client.sign({ name: 'k' }, 'ECDSA_SHA256', { message }))) throw new Error('a signature that does not verify');
    served++;
  });
  await until(() => (load.assertRunning(), served >= 200), 30_000, '200 requests served');
  await first.stop();
  const duringRestart = served;
  await until(() => (load.assertRunning(), served >= duringRestart + 200), 30_000, '200 more requests served across the restart');
  first = await serve(port);
  await until(() => (load.assertRunning(), client.status()[0]!.open >= 2), 30_000, 'the restarted server to have two sessions again');
  await load.stop();
  await client.close();
  await first.stop();
  await second.stop();
});

/** A TCP relay to 127.0.0.1:`port` that a test can cut, as a network fault would: every connection through it drops. */
async function relay(port: number): Promise<{ port: number; cut(): void; close(): void }> {
  const sockets = new Set<Socket>();
  const track = (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  };
  const server = createNetServer((inbound) => {
    const outbound = netConnect(port, '127.0.0.1');
    for (const [from, to] of [[inbound, outbound], [outbound, inbound]] as const) {
      track(from);
      from.pipe(to);
      from.on('error', () => to.destroy());
      from.on('close', () => to.destroy());
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const cut = () => sockets.forEach((socket) => socket.destroy());
  return { port: (server.address() as AddressInfo).port, cut, close: () => (cut(), server.close()) };
}

test('a reconnect resumes the TLS session instead of a full handshake', async () => {
  const server = await serve();
  const via = await relay(Number(new URL(server.url).port));
  const client = pool([`wss://127.0.0.1:${via.port}/v1`], { sessionsPerServer: 1 });
  await client.ready();
  expect(client.status()[0]).toMatchObject({ open: 1, resumed: 0 });
  await client.ping(Buffer.from('x')); // a round trip, so the TLS 1.3 ticket has arrived
  via.cut(); // the connection is lost underneath the session
  await until(() => client.status()[0]!.resumed === 1, 30_000, 'a new session that resumed the TLS session to replace the lost one');
  expect(client.status()[0]).toMatchObject({ open: 1, resumed: 1 });
  expect(ok(await client.sign({ name: 'k' }, 'ECDSA_SHA256', { message }))).toBe(true);
  await client.close();
  via.close();
  await server.stop();
});

test('forward: an encoded operation goes out under the session\'s id; the Response comes back decoded and as the server\'s bytes', async () => {
  const server = await serve();
  const client = pool([server.url]);
  await client.ready();
  const digest = createHash('sha256').update(message).digest();
  // The sign field (3) alone, as a relay cuts it out of a Request whose id is its own.
  const sign = (name: string) => Buffer.from(encodeRequest({ sign: { key: { name }, algorithm: pb.SignatureAlgorithm.ECDSA_SHA256, digest } }));
  const answer = await client.forward(sign('k'));
  expect(answer.response.result).toBe('signature');
  expect(ok(Buffer.from(answer.response.signature!))).toBe(true);
  expect(decodeResponse(answer.bytes).id).toEqual(answer.response.id);
  expect(Number(answer.response.id)).toBeGreaterThan(0);
  // An error answer resolves (it is the relay's to pass on); only BACKEND_UNAVAILABLE/OVERLOADED are retried and thrown.
  const missing = await client.forward(sign('no-such-key'));
  expect(missing.response.result).toBe('error');
  expect(errorCodeName(missing.response.error?.code)).toBe('KEY_NOT_FOUND');
  await client.close();
  await server.stop();
});

describe('against a server that never answers', () => {
  let silent: { url: string; close(): void };
  beforeAll(async () => {
    const https = createServer({ cert: pki.server.certPem, key: pki.server.keyPem, ca: pki.ca.certPem, requestCert: true });
    const wss = new WebSocketServer({ server: https, handleProtocols: () => 'keyless.v1' });
    wss.on('connection', (ws) => ws.on('error', () => {}));
    await new Promise<void>((r) => https.listen(0, '127.0.0.1', r));
    silent = { url: `wss://127.0.0.1:${(https.address() as AddressInfo).port}/v1`, close: () => (wss.close(), https.close(), https.closeAllConnections()) };
  });
  afterAll(() => silent.close());

  test('a request times out with TimeoutError', async () => {
    const client = pool([silent.url], { requestTimeoutMs: 200 });
    await client.ready();
    await expect(client.ping()).rejects.toBeInstanceOf(TimeoutError);
    await client.close();
  });

  test('beyond maxPending, calls fail at once with PoolBusyError instead of queueing', async () => {
    const client = pool([silent.url], { requestTimeoutMs: 5000, maxPending: 5 });
    await client.ready();
    const hung = Array.from({ length: 5 }, () => client.ping().catch(() => undefined));
    await expect(client.ping()).rejects.toBeInstanceOf(PoolBusyError);
    await client.close();
    await Promise.all(hung);
  });
});
