import { constants, createHash, generateKeyPairSync, createPublicKey, verify } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { FileBackend, fileBackendSchema } from '../../backends/file';
import { CryptoFailureError } from '../../src/errors';
import { createLogger } from '../../src/log';

// File keys sign through the addon's batched queue: many operations handed over in one
// flush, results delivered many per wake-up. Every result must reach its own caller.
test('hundreds of concurrent signatures with different keys and inputs each verify against their own input', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'keylessd-queue-'));
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
  const ed = generateKeyPairSync('ed25519').privateKey;
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  writeFileSync(join(dir, 'ec.pem'), ec.export({ format: 'pem', type: 'pkcs8' }));
  writeFileSync(join(dir, 'ed.pem'), ed.export({ format: 'pem', type: 'pkcs8' }));
  writeFileSync(join(dir, 'rsa.pem'), rsa.export({ format: 'pem', type: 'pkcs8' }));
  const backend = new FileBackend(fileBackendSchema.parse({ type: 'file', dir }), createLogger('error', new Writable({ write: (_c, _e, done) => done() })));
  const { keys } = await backend.open();
  const key = (name: string) => keys.find((k) => k.name === name)!;
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
  const dir = mkdtempSync(join(tmpdir(), 'keylessd-queue-'));
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  writeFileSync(join(dir, 'rsa.pem'), rsa.export({ format: 'pem', type: 'pkcs8' }));
  const backend = new FileBackend(fileBackendSchema.parse({ type: 'file', dir }), createLogger('error', new Writable({ write: (_c, _e, done) => done() })));
  const [key] = (await backend.open()).keys;
  const good = key!.sign({ kind: 'rsa-pkcs1', hash: 'sha256' }, Buffer.alloc(32, 1));
  // A 256-byte "ciphertext" of all ones is larger than the modulus: raw decryption fails.
  const bad = key!.decrypt('rsa-raw', Buffer.alloc(256, 0xff));
  await expect(bad).rejects.toThrow(CryptoFailureError);
  await expect(bad).rejects.toThrow(/decryption with key rsa failed/);
  await expect(good).resolves.toHaveLength(256);
  await backend.close();
});
