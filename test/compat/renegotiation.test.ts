import { generateKeyPairSync } from 'node:crypto';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { Tag, encodeFrame } from '../../src/protocols/compat/codec';
import { Opcode } from '../../src/protocols/compat/request';
import { startDaemon, writeKeyDir, type RunningDaemon } from '../helpers/daemon';

// Issue 15 item 8: a TLS 1.2 client renegotiated 98 times a second on the compat port.
// Node emits ERR_TLS_RENEGOTIATION_DISABLED as an 'error' on the socket, but only the
// HTTPS server behind keyless.v1 closes a socket on error; the compat port logged it and
// carried on, so the renegotiation completed. Both ports must end such a connection.

let server: RunningDaemon;

beforeAll(async () => {
  server = await startDaemon({
    backends: [{ type: 'file', dir: writeKeyDir([{ name: 'k', key: generateKeyPairSync('ed25519').privateKey }]) }],
    tls: { min_version: 'TLSv1.2' },
    compat: { enabled: true },
  });
});
afterAll(() => server.stop());

async function metric(pattern: RegExp): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${server.addresses.metrics!.port}/metrics`)).text();
  const match = pattern.exec(text);
  return match ? Number(match[1]) : 0;
}

function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    promise,
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} did not happen within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

const ports = {
  'keyless.v1': { port: () => server.addresses.v1.port, traffic: () => Buffer.from('GET /v1 HTTP/1.1\r\nHost: localhost\r\n\r\n') },
  cloudflare: {
    port: () => server.addresses.compat!.port,
    traffic: () => encodeFrame(1, [[Tag.opcode, Buffer.from([Opcode.ping])], [Tag.payload, Buffer.from('x')]]),
  },
} as const;

test.each(Object.keys(ports) as Array<keyof typeof ports>)('a TLS 1.2 renegotiation on the %s port fails and the server closes the connection', async (listener) => {
  const { pki } = server;
  const { port, traffic } = ports[listener];
  const socket: TLSSocket = await new Promise((resolve, reject) => {
    const s = tlsConnect({ host: '127.0.0.1', port: port(), servername: 'localhost', maxVersion: 'TLSv1.2', ca: pki.ca.certPem, cert: pki.client.certPem, key: pki.client.keyPem });
    s.once('secureConnect', () => resolve(s));
    s.once('error', reject);
  });
  expect(socket.getProtocol()).toBe('TLSv1.2');
  socket.on('error', () => {});
  socket.on('data', () => {});
  // The server ending the connection: its FIN ('end') or the socket closing.
  const closed = new Promise<void>((resolve) => {
    socket.once('end', () => resolve());
    socket.once('close', () => resolve());
  });
  const before = await metric(new RegExp(`^keyless_protocol_errors_total\\{listener="${listener}",kind="renegotiation"\\} (\\S+)$`, 'm'));

  const renegotiated = new Promise<Error | null>((resolve) => {
    const started = socket.renegotiate({ rejectUnauthorized: true }, (err) => resolve(err));
    if (!started) resolve(new Error('renegotiate() refused locally'));
    closed.then(() => resolve(new Error('connection closed')));
  });
  // A renegotiation only progresses while records flow.
  socket.write(traffic());

  try {
    const outcome = await within(10_000, 'the end of the renegotiation attempt', renegotiated);
    expect(outcome).toBeInstanceOf(Error);
      // Refused by the server, not merely failed: the server ends the connection.
    await within(10_000, `the ${listener} server closing the connection`, closed);
  } finally {
    socket.destroy();
  }
  expect(await metric(new RegExp(`^keyless_protocol_errors_total\\{listener="${listener}",kind="renegotiation"\\} (\\S+)$`, 'm'))).toBe(before + 1);
});
