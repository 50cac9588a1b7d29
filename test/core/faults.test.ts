import { createPublicKey, generateKeyPairSync, verify } from 'node:crypto';
import { startDaemon, writeKeyDir, type RunningDaemon } from '../helpers/daemon';
import { FaultSwitch } from '../helpers/faulty-backend';

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

const dispatcher = () => (server.daemon as unknown as { dispatcher: { inflight: number } }).dispatcher;

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
  while (faults.hungCalls > 0 || dispatcher().inflight > 0) await new Promise((r) => setTimeout(r, 10));
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
  while (faults.hungCalls < 6) await new Promise((r) => setTimeout(r, 5));
  (session as unknown as { ws: { terminate(): void } }).ws.terminate();
  await Promise.all(pending);
  faults.mode = 'ok';
  faults.release();
  const v1 = (server.daemon as unknown as { v1: { sessionCount: number } }).v1;
  while (v1.sessionCount > 0 || dispatcher().inflight > 0) await new Promise((r) => setTimeout(r, 10));
  expect(dispatcher().inflight).toBe(0);
  expect(v1.sessionCount).toBe(0);
});

async function retryUntilServed<T>(call: () => Promise<T>): Promise<T> {
  for (;;) {
    try {
      return await call();
    } catch (err) {
      if ((err as { code?: string }).code !== 'BACKEND_UNAVAILABLE') throw err;
      await new Promise((r) => setTimeout(r, 10));
    }
  }
}
