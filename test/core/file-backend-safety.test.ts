import { execFileSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { chmodSync, chownSync, mkdtempSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { FileBackend, fileBackendSchema } from '../../backends/file';
import { ConfigError } from '../../src/errors';
import { createLogger } from '../../src/log';
import { makeTestPki } from '../helpers/pki';
import { freePort } from '../helpers/ports';

function capturingLogger() {
  const lines: Array<{ level: string; msg: string; file?: string }> = [];
  const sink = new Writable({ write: (chunk, _enc, done) => (lines.push(JSON.parse(chunk.toString())), done()) });
  return { logger: createLogger('info', sink), lines };
}

const settle = () => new Promise((r) => setImmediate(r));
const pem = () => generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'pem', type: 'pkcs8' });

function keyDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'keylessd-files-'));
  writeFileSync(join(dir, 'good.pem'), pem(), { mode: 0o600 });
  return dir;
}

test('a dangling symbolic link and a symbolic link loop are skipped with a warning naming them; the other keys are served', async () => {
  const dir = keyDir();
  symlinkSync(join(dir, 'gone.pem'), join(dir, 'dangling.pem'));
  symlinkSync(join(dir, 'loop-b.pem'), join(dir, 'loop-a.pem'));
  symlinkSync(join(dir, 'loop-a.pem'), join(dir, 'loop-b.pem'));
  const { logger, lines } = capturingLogger();
  const { keys, skipped } = await new FileBackend(fileBackendSchema.parse({ type: 'file', dir }), logger).open();
  await settle();
  expect(keys.map((k) => k.name)).toEqual(['good']);
  expect(skipped).toEqual([
    { source: join(dir, 'dangling.pem'), reason: `it is a symbolic link to ${join(dir, 'gone.pem')}, which cannot be opened (ENOENT)` },
    { source: join(dir, 'loop-a.pem'), reason: 'it is a symbolic link loop (ELOOP)' },
    { source: join(dir, 'loop-b.pem'), reason: 'it is a symbolic link loop (ELOOP)' },
  ]);
  const warnings = lines.filter((l) => l.level === 'warn').map((l) => l.msg);
  expect(warnings).toContain(`skipping key file ${join(dir, 'dangling.pem')}: it is a symbolic link to ${join(dir, 'gone.pem')}, which cannot be opened (ENOENT)`);
  expect(warnings).toContain(`skipping key file ${join(dir, 'loop-a.pem')}: it is a symbolic link loop (ELOOP)`);
});

test('a missing file listed in files: is an error naming the field and the path', async () => {
  const dir = keyDir();
  const { logger } = capturingLogger();
  const backend = new FileBackend(fileBackendSchema.parse({ type: 'file', name: 'edge', files: [{ path: join(dir, 'good.pem') }, { path: join(dir, 'missing.pem') }] }), logger);
  const err = await backend.open().then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ConfigError);
  expect((err as Error).message).toBe(`backends.edge.files[1].path: cannot read the key file ${join(dir, 'missing.pem')}: ENOENT`);
});

test('a legacy encrypted PEM (Proc-Type: 4,ENCRYPTED) without a passphrase says so; with one it loads', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'keylessd-files-'));
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  writeFileSync(join(dir, 'legacy.pem'), rsa.export({ format: 'pem', type: 'pkcs1', cipher: 'aes-128-cbc', passphrase: 'pw' }), { mode: 0o600 });
  writeFileSync(join(dir, '.pass'), 'pw\n', { mode: 0o600 });
  const { logger } = capturingLogger();
  const without = await new FileBackend(fileBackendSchema.parse({ type: 'file', dir }), logger).open();
  expect(without.skipped).toEqual([
    { source: join(dir, 'legacy.pem'), reason: 'it is encrypted with legacy PEM encryption (Proc-Type: 4,ENCRYPTED) and no passphrase_file is configured for it' },
  ]);
  const withPass = await new FileBackend(fileBackendSchema.parse({ type: 'file', dir, passphrase_file: join(dir, '.pass') }), logger).open();
  expect(withPass.keys.map((k) => k.name)).toEqual(['legacy']);
});

test('key and passphrase files readable by others, or by a group the service is not in, are warned about with the path', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'keylessd-files-'));
  writeFileSync(join(dir, 'private.pem'), pem(), { mode: 0o600 });
  writeFileSync(join(dir, 'own-group.pem'), pem(), { mode: 0o640 });
  writeFileSync(join(dir, 'world.pem'), pem());
  chmodSync(join(dir, 'world.pem'), 0o644);
  writeFileSync(join(dir, 'other-group.pem'), pem(), { mode: 0o640 });
  const foreignGroup = 54321;
  chownSync(join(dir, 'other-group.pem'), process.getuid!(), foreignGroup);
  const pass = join(mkdtempSync(join(tmpdir(), 'keylessd-pass-')), 'pass');
  writeFileSync(pass, 'unused\n');
  chmodSync(pass, 0o644);
  const { logger, lines } = capturingLogger();
  const { keys } = await new FileBackend(fileBackendSchema.parse({ type: 'file', dir, passphrase_file: pass }), logger).open();
  await settle();
  expect(keys).toHaveLength(4);
  const warnings = lines.filter((l) => l.level === 'warn').map((l) => l.msg);
  expect(warnings).toEqual(
    expect.arrayContaining([
      `key file ${join(dir, 'world.pem')} is readable by every user on this machine (mode 0644); chmod o-r it (0600, or 0640 with the service's group)`,
      `key file ${join(dir, 'other-group.pem')} is readable by group ${foreignGroup}, which this service does not run in (mode 0640); chmod g-r it or chgrp it to the service's group`,
      `passphrase file ${pass} is readable by every user on this machine (mode 0644); chmod o-r it (0600, or 0640 with the service's group)`,
    ]),
  );
  expect(warnings).toHaveLength(3);
  expect(warnings.join('\n')).not.toContain('private.pem');
  expect(warnings.join('\n')).not.toContain('own-group.pem');
  expect(JSON.stringify(lines)).not.toContain('unused');
});

test('keylessd --check-config lists the warnings and the skipped links, and still passes', async () => {
  const pki = await makeTestPki();
  const dir = keyDir();
  chmodSync(join(dir, 'good.pem'), 0o644);
  symlinkSync(join(dir, 'gone.pem'), join(dir, 'dangling.pem'));
  const file = join(pki.dir, 'keylessd.yaml');
  writeFileSync(
    file,
    `listen: {port: ${await freePort()}}\nmetrics: {port: ${await freePort()}}\ntls: {cert: server.crt, key: server.key, client_ca: ca.crt}\naudit: {path: audit.log}\nbackends: [{type: file, dir: ${dir}}]\n`,
  );
  const out = execFileSync(process.execPath, [join(__dirname, '..', '..', 'dist', 'src', 'cli', 'keylessd.js'), '--check-config', file]).toString();
  expect(out).toBe(
    `${file}: OK, 1 keys from 1 backend(s)\n` +
      `  skipped ${join(dir, 'dangling.pem')}: it is a symbolic link to ${join(dir, 'gone.pem')}, which cannot be opened (ENOENT)\n` +
      `  warning: key file ${join(dir, 'good.pem')} is readable by every user on this machine (mode 0644); chmod o-r it (0600, or 0640 with the service's group)\n`,
  );
});
