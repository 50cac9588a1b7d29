import { createHash, createPublicKey, generateKeyPairSync, verify } from 'node:crypto';
import { FairScheduler } from '../../src/core/fair-scheduler';
import { startDaemon, writeKeyDir, type RunningDaemon } from '../helpers/daemon';
import { until } from '../helpers/until';

// Issue 17: at twice the load a backend sustains, requests used to queue without bound in
// front of it, so every answer came later and later and then as TIMEOUT. Work beyond a
// bounded queue is now refused with OVERLOADED at once; the rest is served.

describe('FairScheduler queue bound', () => {
  test('beyond the bound calls are refused OVERLOADED at once; a session below its share still gets in', async () => {
    const scheduler = new FairScheduler(() => 1, () => 4);
    const backend = {};
    const [flood, quiet] = [{}, {}];
    const release: Array<() => void> = [];
    const started: string[] = [];
    const submit = (session: object, name: string) =>
      scheduler.run(backend, session, 60_000, {
        describe: () => name,
        start: () => {
          started.push(name);
          return new Promise<string>((resolve) => release.push(() => resolve(name)));
        },
      });
    const outcomes: Record<string, string> = {};
    const calls = Array.from({ length: 11 }, (_, i) => {
      const name = `flood${i}`;
      return submit(flood, name).then(
        () => (outcomes[name] = 'ok'),
        (err: { code?: string }) => (outcomes[name] = err.code ?? 'error'),
      );
    });
    // One runs, four wait, six are refused without the backend doing anything.
    await until(() => Object.keys(outcomes).length === 6, 10_000, 'the refusals');
    expect(Object.values(outcomes)).toEqual(Array(6).fill('OVERLOADED'));
    expect(started).toEqual(['flood0']);
    expect(scheduler.queued(backend)).toBe(4);
    // The queue is full, but the quiet session has nothing waiting: its share is 4 / 2.
    const quietCall = submit(quiet, 'quiet');
    expect(scheduler.queued(backend)).toBe(5);
    while (release.length > 0 || started.length < 6) {
      await until(() => release.length > 0, 10_000, 'a call to release');
      release.shift()!();
      await new Promise((r) => setImmediate(r));
    }
    await expect(quietCall).resolves.toBe('quiet');
    await Promise.all(calls);
    expect(Object.values(outcomes).filter((o) => o === 'ok')).toHaveLength(5);
    // Round-robin still holds: the quiet call went second, not behind the flood's queue.
    expect(started.slice(0, 3)).toEqual(['flood0', 'flood1', 'quiet']);
  });
});

describe('a daemon offered more than its backend sustains', () => {
  const key = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  let server: RunningDaemon;
  beforeAll(async () => {
    server = await startDaemon({ backends: [{ type: 'file', dir: writeKeyDir([{ name: 'rsa', key }]) }], limits: { max_inflight_per_session: 10_000, max_queued_per_backend: 8 } });
  });
  afterAll(() => server.stop());

  test('answers the excess OVERLOADED at once and the rest with signatures that verify', async () => {
    const session = await server.connect();
    const digest = createHash('sha256').update('overload').digest();
    const order: string[] = [];
    const signatures: Buffer[] = [];
    const requests = 400;
    await Promise.all(
      Array.from({ length: requests }, () =>
        session.sign({ name: 'rsa' }, 'RSA_PKCS1_SHA256', { digest }).then(
          (signature) => {
            signatures.push(signature);
            order.push('ok');
          },
          (err: { code?: string }) => order.push(err.code ?? String(err)),
        ),
      ),
    );
    expect(order).toHaveLength(requests);
    // Only two outcomes: served, or refused; nothing waited until its deadline (TIMEOUT).
    expect(order.filter((o) => o !== 'ok' && o !== 'OVERLOADED')).toEqual([]);
    const overloaded = order.filter((o) => o === 'OVERLOADED').length;
    expect(overloaded).toBeGreaterThan(0);
    expect(signatures.length).toBeGreaterThanOrEqual(8);
    // Refusals did not wait for the backlog: the first came before the last signature.
    expect(order.indexOf('OVERLOADED')).toBeLessThan(order.lastIndexOf('ok'));
    const publicKey = createPublicKey(key);
    for (const signature of signatures) expect(verify('sha256', Buffer.from('overload'), publicKey, signature)).toBe(true);
    // The server is fine afterwards: a request alone is served.
    await expect(session.sign({ name: 'rsa' }, 'RSA_PKCS1_SHA256', { digest })).resolves.toBeInstanceOf(Buffer);
    await session.close();
  });
});

describe('refusals of every kind', () => {
  const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
  let server: RunningDaemon;
  beforeAll(async () => {
    server = await startDaemon({ backends: [{ type: 'file', dir: writeKeyDir([{ name: 'p256', key }]) }], limits: { max_inflight_per_session: 2 } });
  });
  afterAll(() => server.stop());

  test('leave nothing counted in flight: a session with a limit of 2 refused 300 times is still served', async () => {
    const session = await server.connect();
    const digest = createHash('sha256').update('refused').digest();
    const outcomes = await Promise.all(
      Array.from({ length: 300 }, (_, i) => {
        // In turn: an unknown key (refused before the backend), an algorithm the key cannot do
        // (refused by the backend call), a digest of the wrong length (refused by the backend call).
        const request =
          i % 3 === 0
            ? session.sign({ name: 'missing' }, 'ECDSA_SHA256', { digest })
            : i % 3 === 1
              ? session.sign({ name: 'p256' }, 'RSA_PKCS1_SHA256', { digest })
              : session.sign({ name: 'p256' }, 'ECDSA_SHA256', { digest: digest.subarray(1) });
        return request.then(
          () => 'ok',
          (err: { code?: string }) => err.code ?? String(err),
        );
      }),
    );
    // Every request got an answer and none succeeded; those that came while two were in
    // flight were refused for the limit (OVERLOADED), and each kind was refused for itself.
    expect(outcomes.filter((o) => !['KEY_NOT_FOUND', 'UNSUPPORTED', 'BAD_REQUEST', 'OVERLOADED'].includes(o))).toEqual([]);
    for (const code of ['KEY_NOT_FOUND', 'UNSUPPORTED', 'BAD_REQUEST']) expect({ code, seen: outcomes.includes(code) }).toEqual({ code, seen: true });
    const metrics = async () => (await fetch(`http://127.0.0.1:${server.addresses.metrics!.port}/metrics`)).text();
    await until(async () => /^keyless_inflight_requests\{listener="keyless\.v1"\} 0$/m.test(await metrics()), 10_000, 'the in-flight gauge to return to 0');
    expect(await metrics()).toMatch(/keyless_requests_total\{[^}]*result="KEY_NOT_FOUND"[^}]*\} \d+/);
    const served = await Promise.all([0, 1].map(() => session.sign({ name: 'p256' }, 'ECDSA_SHA256', { digest })));
    for (const signature of served) expect(verify('sha256', Buffer.from('refused'), createPublicKey(key), signature)).toBe(true);
    await session.close();
  });
});
