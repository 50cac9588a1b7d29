import { generateKeyPairSync, createPublicKey } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { FileBackend, fileBackendSchema } from '../../backends/file';
import { computeSki } from '../../src/core/crypto/keyid';
import { createLogger } from '../../src/log';

function capturingLogger() {
  const lines: string[] = [];
  const sink = new Writable({ write: (chunk, _enc, done) => (lines.push(chunk.toString()), done()) });
  return { logger: createLogger('info', sink), lines };
}

test('reads every container format and skips what it cannot use, naming file and reason', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'keylessd-files-'));
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey;
  const ed = generateKeyPairSync('ed25519').privateKey;
  const enc = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
  writeFileSync(join(dir, 'pkcs8.pem'), rsa.export({ format: 'pem', type: 'pkcs8' }));
  writeFileSync(join(dir, 'pkcs1.pem'), rsa.export({ format: 'pem', type: 'pkcs1' }).toString().replace(/^/, ''));
  writeFileSync(join(dir, 'sec1.der'), ec.export({ format: 'der', type: 'sec1' }));
  writeFileSync(join(dir, 'ed.der'), ed.export({ format: 'der', type: 'pkcs8' }));
  writeFileSync(join(dir, 'rsa1.key'), rsa.export({ format: 'der', type: 'pkcs1' }));
  writeFileSync(join(dir, 'encrypted.pem'), enc.export({ format: 'pem', type: 'pkcs8', cipher: 'aes-256-cbc', passphrase: 'correct horse' }));
  writeFileSync(join(dir, 'wrongpass.pem'), enc.export({ format: 'pem', type: 'pkcs8', cipher: 'aes-256-cbc', passphrase: 'something else' }));
  writeFileSync(join(dir, 'k1.pem'), generateKeyPairSync('ec', { namedCurve: 'secp256k1' }).privateKey.export({ format: 'pem', type: 'pkcs8' }));
  writeFileSync(join(dir, 'public.pem'), createPublicKey(rsa).export({ format: 'pem', type: 'spki' }));
  writeFileSync(join(dir, 'small.pem'), generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey.export({ format: 'pem', type: 'pkcs8' }));
  writeFileSync(join(dir, 'notes.txt'), 'not a key');
  writeFileSync(join(dir, 'pass'), 'correct horse\n');
  const { logger, lines } = capturingLogger();
  const backend = new FileBackend(fileBackendSchema.parse({ type: 'file', dir, passphrase_file: join(dir, 'pass') }), logger);
  const { keys, skipped } = await backend.open();
  logger.flush();
  expect(keys.map((k) => k.name).sort()).toEqual(['ed', 'encrypted', 'pkcs1', 'pkcs8', 'rsa1', 'sec1']);
  const reasons = Object.fromEntries(skipped.map((s) => [s.source.split('/').pop(), s.reason]));
  expect(reasons['wrongpass.pem']).toBe('it cannot be decrypted: wrong passphrase, or the file is damaged');
  expect(reasons['k1.pem']).toMatch(/^it .*unsupported curve secp256k1/);
  expect(reasons['public.pem']).toBe('it holds a public key, not a private key');
  expect(reasons['small.pem']).toMatch(/2048 to 4096 bits, this one has 1024/);
  expect(reasons['notes.txt']).toMatch(/not a PEM or DER private key/);
  expect(reasons['pass']).toBeDefined();
  await new Promise((r) => setImmediate(r));
  const log = lines.join('');
  expect(log).toContain('skipping key file');
  expect(log).toContain('wrongpass.pem');
  expect(log).not.toContain('correct horse');
  expect(log).not.toContain('something else');
  const pkcs8 = keys.find((k) => k.name === 'pkcs8')!;
  expect(pkcs8.publicKey.ski).toEqual(computeSki(createPublicKey(rsa).export({ format: 'der', type: 'spki' })));
  expect(keys.find((k) => k.name === 'pkcs1')!.publicKey.ski).toEqual(pkcs8.publicKey.ski);
});

test('listed files take their configured name; an encrypted one without passphrase is skipped', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'keylessd-files-'));
  const key = generateKeyPairSync('ed25519').privateKey;
  writeFileSync(join(dir, 'a.pem'), key.export({ format: 'pem', type: 'pkcs8' }));
  writeFileSync(join(dir, 'b.pem'), key.export({ format: 'pem', type: 'pkcs8', cipher: 'aes-128-cbc', passphrase: 'pw' }));
  const { logger } = capturingLogger();
  const backend = new FileBackend(fileBackendSchema.parse({ type: 'file', files: [{ path: join(dir, 'a.pem'), name: 'edge-key' }, { path: join(dir, 'b.pem') }] }), logger);
  const { keys, skipped } = await backend.open();
  expect(keys.map((k) => k.name)).toEqual(['edge-key']);
  expect(skipped).toEqual([{ source: join(dir, 'b.pem'), reason: 'it is encrypted and no passphrase_file is configured for it' }]);
});
