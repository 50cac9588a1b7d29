import { fork } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { WebSocket } from 'ws';
import { FrameReader, Tag, decodeFrame, encodeFrame } from '../../src/protocols/compat/codec';
import { Opcode } from '../../src/protocols/compat/request';
import { decodeResponse, encodeRequest } from '../../src/protocols/v1/codec';
import { startDaemon, writeKeyDir, type RunningDaemon } from '../helpers/daemon';
import { until } from '../helpers/until';

// Issue 15 item 7: 5,000 TCP connections that never finish the TLS handshake made 20 of 26
// legitimate connections fail, because a connection in its handshake counted against
// max_sessions. Now handshakes have their own caps (in total and per source address),
// checked on the raw TCP connection, and only finished handshakes are sessions.
// Linux routes all of 127.0.0.0/8 to lo, so 127.0.0.1 floods and 127.0.0.2 is the edge.

const FLOOD = 2000; // idle TCP connections kept open against each port
const PER_ADDRESS = 32;
const EDGE_CONNECTIONS = 20; // legitimate connections per port during the flood
const DEADLINE_MS = 45_000;

let server: RunningDaemon;

beforeAll(async () => {
  server = await startDaemon({
    backends: [{ type: 'file', dir: writeKeyDir([{ name: 'k', key: generateKeyPairSync('ed25519').privateKey }]) }],
    compat: { enabled: true },
    // max_sessions well below the flood: before the fix the flood alone filled it.
    limits: { max_sessions: 500, max_pending_handshakes: 400, max_pending_handshakes_per_address: PER_ADDRESS },
  });
});
afterAll(() => server.stop());

async function metrics(): Promise<string> {
  return (await fetch(`http://127.0.0.1:${server.addresses.metrics!.port}/metrics`)).text();
}

function sample(text: string, series: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line ? Number(line.split(' ').pop()) : 0;
}

/**
 * Keeps `size` idle TCP connections open from 127.0.0.1 against `port`, in a child process
 * (a flood does not share its event loop with the daemon it attacks): every one the server
 * closes is opened again 20 ms later, until stop(). `opened` counts the connections made.
 */
function flood(port: number, size: number) {
  const script = `
    const { connect } = require('node:net');
    let opened = 0, running = true;
    const one = () => {
      if (!running) return;
      const s = connect({ port: ${port}, host: '127.0.0.1', localAddress: '127.0.0.1' });
      opened++;
      s.on('error', () => {});
      s.on('close', () => setTimeout(one, 20));
    };
    for (let i = 0; i < ${size}; i++) one();
    setInterval(() => process.send(opened), 100);
    process.on('message', () => { running = false; process.exit(0); });`;
  const child = fork('-e', [script], { execArgv: [], stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
  let opened = 0;
  child.on('message', (n) => (opened = Number(n)));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return {
    get opened() {
      return opened;
    },
    async stop() {
      child.send('stop');
      await exited;
    },
  };
}

/** One legitimate keyless.v1 connection from 127.0.0.2: handshake, upgrade, a ping answered. */
function edgeV1(): Promise<void> {
  const { pki } = server;
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(server.url, 'keyless.v1', { ca: pki.ca.certPem, cert: pki.client.certPem, key: pki.client.keyPem, localAddress: '127.0.0.2', handshakeTimeout: 20_000 });
    ws.once('error', reject);
    ws.once('open', () => ws.send(encodeRequest({ id: 7, ping: { payload: Buffer.from('edge') } })));
    ws.once('message', (data: Buffer) => {
      const answer = decodeResponse(data);
      ws.close();
      if (Number(answer.id) === 7 && Buffer.from(answer.pong!.payload!).toString() === 'edge') resolve();
      else reject(new Error('unexpected answer'));
    });
  });
}

/** One legitimate compat connection from 127.0.0.2: handshake and a ping answered. */
function edgeCompat(): Promise<void> {
  const { pki } = server;
  return new Promise((resolve, reject) => {
    const tcp = netConnect({ host: '127.0.0.1', port: server.addresses.compat!.port, localAddress: '127.0.0.2' });
    const socket = tlsConnect({ socket: tcp, servername: 'localhost', ca: pki.ca.certPem, cert: pki.client.certPem, key: pki.client.keyPem });
    const timer = setTimeout(() => reject(new Error('no pong within 20 s')), 20_000);
    const reader = new FrameReader();
    socket.once('error', reject);
    socket.once('secureConnect', () => socket.write(encodeFrame(9, [[Tag.opcode, Buffer.from([Opcode.ping])], [Tag.payload, Buffer.from('edge')]])));
    socket.on('data', (chunk: Buffer) => {
      for (const bytes of reader.push(chunk)) {
        const frame = decodeFrame(bytes);
        clearTimeout(timer);
        socket.end();
        if (frame.id === 9 && frame.items.get(Tag.opcode)?.[0] === Opcode.pong) resolve();
        else reject(new Error('unexpected answer'));
      }
    });
  });
}

test.each([
  ['keyless.v1', () => server.addresses.v1.port, edgeV1],
  ['cloudflare', () => server.addresses.compat!.port, edgeCompat],
] as const)('during a flood of idle TCP connections on the %s port, every edge from another address connects', async (listener, port, edge) => {
  const refusedSeries = `keyless_connections_refused_total{listener="${listener}",reason="max_pending_handshakes_per_address"}`;
  const pendingSeries = `keyless_tls_handshakes_pending{listener="${listener}"}`;
  const refusedBefore = sample(await metrics(), refusedSeries);
  const attack = flood(port(), FLOOD);
  try {
    // The flood is under way: the server is turning its connections away and it reconnects.
    await until(() => attack.opened > 2 * FLOOD, DEADLINE_MS, 'the flood to be turned away and reconnect');
    let pendingPeak = 0;
    const failures: string[] = [];
    for (let i = 0; i < EDGE_CONNECTIONS; i++) {
      await edge().catch((err: Error) => failures.push(err.message));
      pendingPeak = Math.max(pendingPeak, sample(await metrics(), pendingSeries));
    }
    expect(failures).toEqual([]);
    // Turned away by the per-address cap, at once.
    expect(sample(await metrics(), refusedSeries)).toBeGreaterThan(refusedBefore + FLOOD);
    // The flood holds no more handshake slots than its address is allowed (plus the edge's own).
    expect(pendingPeak).toBeLessThanOrEqual(PER_ADDRESS + 1);
  } finally {
    await attack.stop();
  }
  await until(async () => sample(await metrics(), pendingSeries) === 0, DEADLINE_MS, 'the pending handshakes to drain');
}, 120_000);

test('the total cap holds handshakes from many addresses, and idle handshakes never count as sessions', async () => {
  const small = await startDaemon(
    {
      backends: [{ type: 'file', dir: writeKeyDir([{ name: 'k', key: generateKeyPairSync('ed25519').privateKey }]) }],
      limits: { max_sessions: 2, max_pending_handshakes: 12, max_pending_handshakes_per_address: 3 },
    },
    server.pki,
  );
  const text = async () => (await fetch(`http://127.0.0.1:${small.addresses.metrics!.port}/metrics`)).text();
  const pending = 'keyless_tls_handshakes_pending{listener="keyless.v1"}';
  const byAddress = 'keyless_connections_refused_total{listener="keyless.v1",reason="max_pending_handshakes_per_address"}';
  const byTotal = 'keyless_connections_refused_total{listener="keyless.v1",reason="max_pending_handshakes"}';
  const bySessions = 'keyless_connections_refused_total{listener="keyless.v1",reason="max_sessions"}';
  const idle: Socket[] = [];
  const openIdle = (address: string) => {
    const socket = netConnect({ port: small.addresses.v1.port, host: '127.0.0.1', localAddress: address });
    socket.on('error', () => {});
    idle.push(socket);
  };
  try {
    // 5 idle connections from each of 8 addresses: at most 3 per address and 12 in all are admitted.
    for (let a = 10; a < 18; a++) for (let i = 0; i < 5; i++) openIdle(`127.0.0.${a}`);
    await until(async () => {
      const t = await text();
      return sample(t, byAddress) + sample(t, byTotal) === 40 - 12;
    }, DEADLINE_MS, 'all 40 idle connections to be admitted or refused');
    let t = await text();
    expect(sample(t, pending)).toBe(12);
    // Which address fills its slots first depends on arrival order; at most 4 addresses can
    // take 3 slots each before all 12 are gone, so at most 8 refusals are per address.
    expect(sample(t, byAddress)).toBeLessThanOrEqual(8);
    expect(sample(t, byTotal)).toBeGreaterThanOrEqual(20);
    for (const socket of idle.splice(0)) socket.destroy();
    await until(async () => sample(await text(), pending) === 0, DEADLINE_MS, 'the idle connections to be gone');

    // More idle connections than max_sessions, in their handshake: sessions still open.
    for (let i = 0; i < 3; i++) openIdle('127.0.0.10');
    await until(async () => sample(await text(), pending) === 3, DEADLINE_MS, 'three pending handshakes');
    const sessions = await Promise.all([small.connect(), small.connect()]);
    expect(await sessions[0]!.ping(Buffer.from('ok'))).toEqual(Buffer.from('ok'));
    t = await text();
    expect(sample(t, bySessions)).toBe(0);
    expect(sample(t, pending)).toBe(3);
    // A third session is over max_sessions, and refused as such.
    await expect(small.connect()).rejects.toThrow();
    expect(sample(await text(), bySessions)).toBe(1);
    await Promise.all(sessions.map((s) => s.close()));
  } finally {
    for (const socket of idle) socket.destroy();
    await small.stop();
  }
});
