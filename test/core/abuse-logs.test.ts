import { generateKeyPairSync } from 'node:crypto';
import { join } from 'node:path';
import { connect as netConnect } from 'node:net';
import { validateConfig } from '../../src/config/load';
import { Daemon } from '../../src/daemon';
import { createLogger } from '../../src/log';
import { DEFAULT_LOG_LIMIT } from '../../src/util/log-limiter';
import { writeKeyDir } from '../helpers/daemon';
import { makeTestPki } from '../helpers/pki';
import { until } from '../helpers/until';

// Issue 15 item 10: junk from unauthenticated clients wrote one info line per connection
// (1,600 lines a second), and a failed handshake logged its peer as `undefined:undefined`.

const JUNK = 120; // per port
const PER_ADDRESS = 8;

interface Line {
  msg: string;
  level: string;
  kind?: string;
  suppressed?: number;
  peer?: string;
  listener?: string;
  reason?: string;
}

/** One junk connection: TCP, bytes that are not TLS, until the server hangs up. */
function junk(port: number): Promise<void> {
  return new Promise((resolve) => {
    const socket = netConnect({ port, host: '127.0.0.1' }, () => socket.write('GET / HTTP/1.0\r\n\r\n'));
    socket.on('error', () => {});
    socket.on('data', () => {});
    socket.on('close', () => resolve());
  });
}

test('junk connections and refusals write a bounded number of log lines and a summary with the right count', async () => {
  const lines: string[] = [];
  const logger = createLogger('info', { write: (chunk: string) => void lines.push(chunk) });
  const pki = await makeTestPki();
  const config = validateConfig({
    listen: { host: '127.0.0.1', port: 1 },
    metrics: { host: '127.0.0.1', port: 1 },
    tls: { cert: pki.files.serverCert, key: pki.files.serverKey, client_ca: pki.files.caCert },
    compat: { enabled: true },
    limits: { max_pending_handshakes_per_address: PER_ADDRESS },
    audit: { path: join(pki.dir, 'audit.log') },
    backends: [{ type: 'file', dir: writeKeyDir([{ name: 'k', key: generateKeyPairSync('ed25519').privateKey }]) }],
  });
  const { daemon, addresses } = await Daemon.start({ ...config, listen: { ...config.listen, port: 0 }, metrics: { ...config.metrics, port: 0 }, compat: { ...config.compat, port: 0 } }, logger);
  let stopped = false;
  try {
    // Junk handshakes, a few at a time (below the per-address cap), on both ports.
    for (const port of [addresses.v1.port, addresses.compat!.port]) {
      for (let i = 0; i < JUNK; i += 4) await Promise.all([junk(port), junk(port), junk(port), junk(port)]);
    }
    // Refusals: idle connections beyond the per-address cap.
    const idle = Array.from({ length: PER_ADDRESS + 30 }, () => {
      const socket = netConnect({ port: addresses.v1.port, host: '127.0.0.1' });
      socket.on('error', () => {});
      return socket;
    });
    const refusedMetric = async () => {
      const text = await (await fetch(`http://127.0.0.1:${addresses.metrics!.port}/metrics`)).text();
      return Number(/^keyless_connections_refused_total\{listener="keyless.v1",reason="max_pending_handshakes_per_address"\} (\S+)$/m.exec(text)?.[1] ?? 0);
    };
    await until(async () => (await refusedMetric()) >= 30, 30_000, 'the 30 connections over the per-address cap to be refused');
    idle.forEach((s) => s.destroy());
    await daemon.shutdown(1000); // writes the summaries of the current interval
    stopped = true;
  } finally {
    if (!stopped) await daemon.shutdown(1000);
  }
  const parsed: Line[] = lines.flatMap((chunk) => chunk.split('\n').filter(Boolean)).map((l) => JSON.parse(l) as Line);
  for (const listener of ['keyless.v1', 'cloudflare']) {
    const failures = parsed.filter((l) => l.msg === 'TLS handshake failed' && l.listener === listener);
    const summaries = parsed.filter((l) => l.kind === `handshake_failed/${listener}`);
    // The first lines of the interval are written, the rest counted (an interval boundary may fall inside the run).
    expect(failures.length).toBeGreaterThanOrEqual(DEFAULT_LOG_LIMIT.lines);
    expect(failures.length).toBeLessThanOrEqual(3 * DEFAULT_LOG_LIMIT.lines);
    // Every junk connection, and on keyless.v1 the admitted idle ones too (reset by the client).
    expect(failures.length + summaries.reduce((n, l) => n + l.suppressed!, 0)).toBe(listener === 'keyless.v1' ? JUNK + PER_ADDRESS : JUNK);
    // The real peer, captured before Node forgets it.
    for (const line of failures) expect(line.peer).toMatch(/^127\.0\.0\.1:\d+$/);
  }
  const refusals = parsed.filter((l) => l.msg === 'connection refused before the TLS handshake');
  const refusalSummaries = parsed.filter((l) => l.kind === 'connection_refused/keyless.v1/max_pending_handshakes_per_address');
  expect(refusals.length).toBeLessThanOrEqual(3 * DEFAULT_LOG_LIMIT.lines);
  expect(refusals.length + refusalSummaries.reduce((n, l) => n + l.suppressed!, 0)).toBe(30);
  for (const line of refusals) expect(line.peer).toMatch(/^127\.0\.0\.1:\d+$/);
  // Bounded in total: far fewer lines than events.
  expect(parsed.length).toBeLessThan(100);
}, 120_000);
