import { constants, createHash, generateKeyPairSync, createPublicKey, publicEncrypt, verify, type KeyObject } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { FileBackend, fileBackendSchema } from '../../backends/file';
import { CryptoFailureError } from '../../src/errors';
import { createLogger } from '../../src/log';

/** A file backend over a fresh folder holding `keys` (name -> private key), opened. */
async function openBackendWith(keys: Record<string, KeyObject>) {
  const dir = mkdtempSync(join(tmpdir(), 'keylessd-queue-'));
  for (const [name, privateKey] of Object.entries(keys)) writeFileSync(join(dir, `${name}.pem`), privateKey.export({ format: 'pem', type: 'pkcs8' }));
  const backend = new FileBackend(fileBackendSchema.parse({ type: 'file', dir }), createLogger('error', new Writable({ write: (_c, _e, done) => done() })));
  const opened = (await backend.open()).keys;
  return { backend, key: (name: string) => opened.find((k) => k.name === name)! };
}

/** Which settles first: `operation` (started now) or an immediate scheduled just before it. */
async function firstOf(operation: () => Promise<boolean>): Promise<string[]> {
  const order: string[] = [];
  const checkPhase = new Promise<void>((resolve) => setImmediate(() => (order.push('check phase'), resolve())));
  const done = operation().then((ok) => order.push(ok ? 'answered' : 'answered wrongly'));
  await Promise.all([checkPhase, done]);
  return order;
}

// File keys sign through the addon's batched queue: many operations handed over in one
// flush, results delivered many per wake-up. Every result must reach its own caller.
test('hundreds of concurrent signatures with different keys and inputs each verify against their own input', async () => {
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
  const ed = generateKeyPairSync('ed25519').privateKey;
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  const { backend, key } = await openBackendWith({ ec, ed, rsa });
  const jobs = Array.from({ length: 600 }, (_, i) => {
    const message = Buffer.from(`message ${i}`);
    const digest = createHash('sha256').update(message).digest();
    if (i % 3 === 0) return key('ec').sign({ kind: 'ecdsa', hash: 'sha256' }, digest).then((sig) => verify('sha256', message, createPublicKey(ec), sig));
    if (i % 3 === 1) return key('ed').sign({ kind: 'ed25519' }, message).then((sig) => verify(null, message, createPublicKey(ed), sig));
    return key('rsa')
      .sign({ kind: 'rsa-pss', hash: 'sha256' }, digest)
      .then((sig) => verify('sha256', message, { key: createPublicKey(rsa), padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, sig));
  });
  const results = await Promise.all(jobs);
  expect(results.filter((ok) => !ok)).toHaveLength(0);
  await backend.close();
});

test('a failed operation rejects only its own caller, with CryptoFailureError naming the key', async () => {
  const { backend, key } = await openBackendWith({ rsa: generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey });
  const good = key('rsa').sign({ kind: 'rsa-pkcs1', hash: 'sha256' }, Buffer.alloc(32, 1));
  // A 256-byte "ciphertext" of all ones is larger than the modulus: raw decryption fails.
  const bad = key('rsa').decrypt('rsa-raw', Buffer.alloc(256, 0xff));
  await expect(bad).rejects.toThrow(CryptoFailureError);
  await expect(bad).rejects.toThrow(/decryption with key rsa failed/);
  await expect(good).resolves.toHaveLength(256);
  await backend.close();
});

// A signing thread reuses the OpenSSL context of an earlier operation with the same key,
// operation and digest (openssl_keys.c, ctx_take). Interleaved requests that differ in only
// one of those must each get a context set up for themselves: a signature made with the
// wrong digest or padding would not verify, and a decryption with the wrong padding fails.
test('interleaved operations that differ only in key, digest, padding or operation each get their own result', async () => {
  const rsaA = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  const rsaB = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  const { backend, key: handle } = await openBackendWith({ a: rsaA, b: rsaB });
  const pss = (saltLength: number) => ({ padding: constants.RSA_PKCS1_PSS_PADDING, saltLength });
  const jobs = Array.from({ length: 240 }, (_, i) => {
    const [name, privateKey] = i % 2 === 0 ? ['a', rsaA] : ['b', rsaB];
    const publicKey = createPublicKey(privateKey);
    const message = Buffer.from(`interleaved ${i}`);
    const sha256 = createHash('sha256').update(message).digest();
    const sha384 = createHash('sha384').update(message).digest();
    switch (Math.floor(i / 2) % 5) {
      case 0:
        return handle(name).sign({ kind: 'rsa-pss', hash: 'sha256' }, sha256).then((sig) => verify('sha256', message, { key: publicKey, ...pss(32) }, sig));
      case 1:
        return handle(name).sign({ kind: 'rsa-pss', hash: 'sha384' }, sha384).then((sig) => verify('sha384', message, { key: publicKey, ...pss(48) }, sig));
      case 2:
        return handle(name).sign({ kind: 'rsa-pkcs1', hash: 'sha256' }, sha256).then((sig) => verify('sha256', message, publicKey, sig));
      case 3:
        return handle(name).sign({ kind: 'rsa-pkcs1', hash: 'sha384' }, sha384).then((sig) => verify('sha384', message, publicKey, sig));
      default: {
        // Raw RSA: m^e encrypted with the public key comes back as m.
        const plain = Buffer.concat([Buffer.from([0]), createHash('sha512').update(message).digest(), Buffer.alloc(256 - 65, 7)]);
        const ciphertext = publicEncrypt({ key: publicKey, padding: constants.RSA_NO_PADDING }, plain);
        return handle(name).decrypt('rsa-raw', ciphertext).then((out) => out.equals(plain));
      }
    }
  });
  const results = await Promise.all(jobs);
  expect(results.map((ok, i) => (ok ? 'ok' : `request ${i} wrong`)).filter((r) => r !== 'ok')).toEqual([]);
  await backend.close();
});

// With the signing threads idle a lone request must not wait for the event loop's check phase
// (native.ts, run): its answer would leave one loop turn later (measured: +10-25 us at 1x1 p99).
// A P-256 signature alone is made inline in a microtask, so it settles before an immediate
// scheduled just before it; handed over in the check phase, it would settle after.
test('a lone ECDSA signature with the threads idle settles before the next check phase', async () => {
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
  const { backend, key } = await openBackendWith({ ec });
  const digest = createHash('sha256').update('alone').digest();
  await key('ec').sign({ kind: 'ecdsa', hash: 'sha256' }, digest); // loads the addon and the key's queue
  const order = await firstOf(() => key('ec').sign({ kind: 'ecdsa', hash: 'sha256' }, digest).then((sig) => verify('sha256', Buffer.from('alone'), createPublicKey(ec), sig)));
  expect(order).toEqual(['answered', 'check phase']);
  await backend.close();
});

// A lone RSA-2048 operation after a quiet spell also runs inline (openssl_keys.c, runs_inline):
// two thread wake-ups were ~0.3 ms of an edge handshake. Generating the key below takes far
// longer than the 1 ms of quiet the queue asks for before it signs RSA on the main thread.
test('a lone RSA-2048 signature after a quiet spell settles before the next check phase', async () => {
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  const { backend, key } = await openBackendWith({ rsa });
  const digest = createHash('sha256').update('alone').digest();
  const pss = { key: createPublicKey(rsa), padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 };
  const order = await firstOf(() => key('rsa').sign({ kind: 'rsa-pss', hash: 'sha256' }, digest).then((sig) => verify('sha256', Buffer.from('alone'), pss, sig)));
  expect(order).toEqual(['answered', 'check phase']);
  await backend.close();
});
