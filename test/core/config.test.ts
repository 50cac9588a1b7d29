import { execFileSync, spawnSync } from 'node:child_process';
import { createPublicKey, generateKeyPairSync } from 'node:crypto';
import { chmodSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { envOverrides, loadConfigFile, validateConfig } from '../../src/config/load';
import { describePublicKey } from '../../src/core/crypto/keyid';
import { ConfigError } from '../../src/errors';
import { makeTestPki } from '../helpers/pki';
import { writeKeyDir as writeAnyKeyDir } from '../helpers/daemon';
import { freePort } from '../helpers/ports';

/** Key files as an operator should keep them (0600), so --check-config has no warning to add. */
function writeKeyDir(keys: Parameters<typeof writeAnyKeyDir>[0]): string {
  const dir = writeAnyKeyDir(keys);
  for (const entry of readdirSync(dir)) chmodSync(join(dir, entry), 0o600);
  return dir;
}

const base = { tls: { cert: '/c', key: '/k', client_ca: '/ca' }, backends: [{ type: 'file', dir: '/keys' }] };

function problem(raw: Record<string, unknown>, overrides = envOverrides({})): string {
  try {
    validateConfig(raw, overrides);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as Error).message;
  }
  throw new Error('expected the config to be refused');
}

describe('validation names the field and the problem', () => {
  test.each([
    [{ ...base, listen: { port: 'abc' } }, 'listen.port: expected a number between 1 and 65535, got "abc"'],
    [{ ...base, listen: { port: 70000 } }, 'listen.port: expected a number between 1 and 65535, got 70000'],
    [{ ...base, listen: { prot: 1 } }, 'listen: unknown field "prot"'],
    [{ backends: base.backends }, 'tls: required'],
    [{ ...base, backends: [] }, 'backends: expected at least one backend'],
    [{ ...base, backends: [{ type: 'floppy' }] }, 'backends[0].type'],
    [{ ...base, backends: [{ type: 'file' }] }, 'backends[0]: needs `dir` or at least one entry in `files`'],
    [{ ...base, log: { level: 'loud' } }, 'log.level'],
    [{ ...base, tls: { ...base.tls, min_version: 'TLSv1.1' } }, 'tls.min_version'],
    [{ ...base, keys: { k: { decrypt: 'yes' } } }, 'keys.k.decrypt'],
  ])('%j', (raw, expected) => {
    expect(problem(raw as Record<string, unknown>)).toContain(expected);
  });

  test('every problem is listed, not just the first', () => {
    const message = problem({ ...base, listen: { port: 0, host: '' } });
    expect(message).toContain('listen.port');
    expect(message).toContain('listen.host');
  });

  test('environment overrides the file, and a bad value names the field', () => {
    const config = validateConfig(base, envOverrides({ KEYLESSD_LISTEN_PORT: '9999', KEYLESSD_LOG_LEVEL: 'debug' }));
    expect(config.listen.port).toBe(9999);
    expect(config.log.level).toBe('debug');
    expect(problem(base, envOverrides({ KEYLESSD_LISTEN_PORT: 'abc' }))).toContain('listen.port (set by $KEYLESSD_LISTEN_PORT): expected a number between 1 and 65535, got "abc"');
  });

  test('relative paths are resolved against the config file folder', () => {
    const dir = mkdtempSync(join(tmpdir(), 'keylessd-cfg-'));
    writeFileSync(join(dir, 'k.yaml'), 'tls: {cert: s.crt, key: s.key, client_ca: ca.crt}\nbackends: [{type: file, dir: keys}]\n');
    const config = loadConfigFile(join(dir, 'k.yaml'));
    expect(config.tls.cert).toBe(join(dir, 's.crt'));
    expect(config.backends[0]).toMatchObject({ dir: join(dir, 'keys') });
  });

  test('YAML syntax errors name the line', () => {
    const dir = mkdtempSync(join(tmpdir(), 'keylessd-cfg-'));
    writeFileSync(join(dir, 'bad.yaml'), 'listen:\n  port: 1\n bad: [\n');
    expect(() => loadConfigFile(join(dir, 'bad.yaml'))).toThrow(/bad\.yaml:\d+: not valid YAML/);
  });

  test('a missing file says so', () => {
    expect(() => loadConfigFile('/nonexistent/keylessd.yaml')).toThrow('/nonexistent/keylessd.yaml: cannot read the config file: ENOENT');
  });
});

describe('keylessd --check-config', () => {
  const cli = join(__dirname, '..', '..', 'dist', 'src', 'cli', 'keylessd.js');
  // --check-config binds the ports; the defaults may be in use on a shared machine.
  let free: number[] = [];
  beforeAll(async () => {
    free = [await freePort(), await freePort()];
  });
  const ports = () => `listen: {port: ${free[0]}}\nmetrics: {port: ${free[1]}}\n`;

  test('accepts a good config and counts its keys', async () => {
    const pki = await makeTestPki();
    const keys = writeKeyDir([{ name: 'a', key: generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey }]);
    const file = join(pki.dir, 'keylessd.yaml');
    writeFileSync(file, `${ports()}tls: {cert: server.crt, key: server.key, client_ca: ca.crt}\naudit: {path: audit.log}\nbackends:\n  - {type: file, dir: ${keys}}\n`);
    expect(execFileSync(process.execPath, [cli, '--check-config', file]).toString()).toContain('OK, 1 keys from 1 backend(s)');
  });

  test('reports what the daemon would not serve: a key two backends hold is served once', async () => {
    const pki = await makeTestPki();
    const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
    const [first, second] = [writeKeyDir([{ name: 'a', key }]), writeKeyDir([{ name: 'b', key }])];
    const file = join(pki.dir, 'keylessd.yaml');
    writeFileSync(file, `${ports()}tls: {cert: server.crt, key: server.key, client_ca: ca.crt}\naudit: {path: audit.log}\nbackends:\n  - {type: file, name: one, dir: ${first}}\n  - {type: file, name: two, dir: ${second}}\n`);
    const ski = describePublicKey(createPublicKey(key).export({ format: 'der', type: 'spki' })).ski.toString('hex');
    expect(execFileSync(process.execPath, [cli, '--check-config', file]).toString()).toBe(`${file}: OK, 1 keys from 2 backend(s)\n  skipped two/b: SKI ${ski} is already served by backend one\n`);
  });

  test('refuses a bad one with one line per problem and exit status 1', () => {
    const dir = mkdtempSync(join(tmpdir(), 'keylessd-cfg-'));
    writeFileSync(join(dir, 'k.yaml'), 'listen: {port: abc}\ntls: {cert: s.crt, key: s.key, client_ca: ca.crt}\nbackends: [{type: file, dir: keys}]\n');
    const run = spawnSync(process.execPath, [cli, '--check-config', join(dir, 'k.yaml')]);
    expect(run.status).toBe(1);
    expect(run.stderr.toString()).toBe('keylessd: listen.port: expected a number between 1 and 65535, got "abc"\n');
  });

  test('names a TLS file it cannot read', () => {
    const dir = mkdtempSync(join(tmpdir(), 'keylessd-cfg-'));
    writeFileSync(join(dir, 'k.yaml'), 'tls: {cert: s.crt, key: s.key, client_ca: ca.crt}\nbackends: [{type: file, dir: keys}]\n');
    const run = spawnSync(process.execPath, [cli, '--check-config', join(dir, 'k.yaml')]);
    expect(run.stderr.toString()).toContain(`keylessd: tls.cert: cannot read ${join(dir, 's.crt')}: ENOENT\n`);
  });
});
