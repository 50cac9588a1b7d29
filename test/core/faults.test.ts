import { createPublicKey, generateKeyPairSync, verify } from 'node:crypto';
import { startDaemon, writeKeyDir, type RunningDaemon } from '../helpers/daemon';
import { FaultSwitch } from '../helpers/faulty-backend';
import { until } from '../helpers/until';

const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
const message = Buffer.from('fault injection');
let faults: FaultSwitch;
let server: RunningDaemon;

beforeEach(async () => {
  faults = new FaultSwitch();
  server = await startDaemon({ backends: [{ type: 'file', dir: writeKeyDir([{ name: 'k', key }]), timeout_ms: 200 }], limits: { max_inflight_total: 8 } }, undefined, faults.factory);
});
afterEach(async () => {
  faults.release();
  await server.stop();
});

/** A gauge of the running daemon, read as an operator would: from /metrics. */
async function gauge(name: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${server.addresses.metrics!.port}/metrics`)).text();
  const match = new RegExp(`^${name}\\{listener="keyless\\.v1"\\} (\\S+)$`, 'm').exec(text);
  if (!match) throw new Error(`${name} is not in /metrics`);
  return Number(match[1]);
}

test('a hung backend: requests answer TIMEOUT, hung work is bounded, and it recovers', async () => {
  const session = await server.connect();
  faults.mode = 'hang';
  const first = await Promise.all(Array.from({ length: 8 }, () => session.sign({ name: 'k' }, 'ECDSA_SHA256', { message }).catch((e) => e.code)));
  expect(first).toEqual(Array(8).fill('TIMEOUT'));
  // Eight calls are still stuck in the backend: more are refused instead of piling up.
  const more = await Promise.all(Array.from({ length: 20 }, () => session.sign({ name: 'k' }, 'ECDSA_SHA256', { message }).catch((e) => e.code)));
  expect(more).toEqual(Array(20).fill('BACKEND_UNAVAILABLE'));
  expect(faults.hungCalls).toBe(8);
  faults.mode = 'ok';
  faults.release();
  await until(async () => faults.hungCalls === 0 && (await gauge('keyless_inflight_requests')) === 0, 30_000, 'hung calls and in-flight requests to drain');
  const signature = await retryUntilServed(() => session.sign({ name: 'k' }, 'ECDSA_SHA256', { message }));
  expect(verify('sha256', message, createPublicKey(key), signature)).toBe(true);
  await session.close();
});

test('a backend that fails every call: fast BACKEND_UNAVAILABLE, no retry storm', async () => {
  const session = await server.connect();
  faults.mode = 'fail';
  const answers = await Promise.all(Array.from({ length: 100 }, () => session.sign({ name: 'k' }, 'ECDSA_SHA256', { message }).catch((e) => e.code)));
  expect(answers).toEqual(Array(100).fill('BACKEND_UNAVAILABLE'));
  expect(faults.calls).toBe(0); // known down: refused before reaching the store at all
  const ready = await fetch(`http://127.0.0.1:${server.addresses.metrics!.port}/readyz`);
  expect(ready.status).toBe(503);
  expect(await ready.json()).toEqual({ ready: false, failed: [{ check: 'backend:files', problem: 'backend files is down' }] });
  expect(await (await fetch(`http://127.0.0.1:${server.addresses.metrics!.port}/metrics`)).text()).toMatch(/^keyless_backend_up\{backend="files"\} 0$/m);
  faults.mode = 'ok';
  expect((await fetch(`http://127.0.0.1:${server.addresses.metrics!.port}/readyz`)).status).toBe(200);
  expect(await (await fetch(`http://127.0.0.1:${server.addresses.metrics!.port}/metrics`)).text()).toMatch(/^keyless_backend_up\{backend="files"\} 1$/m);
  await session.sign({ name: 'k' }, 'ECDSA_SHA256', { message });
  await session.close();
});

test('a client that disconnects with requests in flight leaves no work or session behind', async () => {
  const session = await server.connect();
  faults.mode = 'hang';
  const pending = Array.from({ length: 6 }, () => session.sign({ name: 'k' }, 'ECDSA_SHA256', { message }).catch((e) => e));
  await until(() => faults.hungCalls >= 6, 30_000, 'six calls to hang in the backend');
  session.abort();
  await Promise.all(pending);
  faults.mode = 'ok';
  faults.release();
  await until(async () => (await gauge('keyless_sessions_active')) === 0 && (await gauge('keyless_inflight_requests')) === 0, 30_000, 'the disconnected session and its requests to be gone');
  expect(await gauge('keyless_inflight_requests')).toBe(0);
  expect(await gauge('keyless_sessions_active')).toBe(0);
});

/** Calls until the backend is back (BACKEND_UNAVAILABLE meanwhile), within a deadline. */
async function retryUntilServed<T>(call: () => Promise<T>): Promise<T> {
  let result: T | undefined;
  await until(
    async () => {
      try {
        result = await call();
        return true;
      } catch (err) {
        if ((err as { code?: string }).code !== 'BACKEND_UNAVAILABLE') throw err;
        return false;
      }
    },
    30_000,
    'the recovered backend to serve again',
  );
  return result!;
}
