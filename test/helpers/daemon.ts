import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KeylessSession } from '../../src/client/session';
import { validateConfig } from '../../src/config/load';
import type { Config } from '../../src/config/schema';
import { Daemon, type DaemonAddresses } from '../../src/daemon';
import type { BackendFactory } from '../../src/daemon/key-set';
import { createLogger } from '../../src/log';
import type { CertificateAndKey } from '../../src/pki/certificates';
import { makeTestPki, type TestPki } from './pki';

export type TestKeySpec = { name: string; type: 'rsa'; bits: number } | { name: string; type: 'ec'; curve: string } | { name: string; type: 'ed25519' };

export function generateKey(spec: TestKeySpec): KeyObject {
  if (spec.type === 'rsa') return generateKeyPairSync('rsa', { modulusLength: spec.bits }).privateKey;
  if (spec.type === 'ec') return generateKeyPairSync('ec', { namedCurve: spec.curve }).privateKey;
  return generateKeyPairSync('ed25519').privateKey;
}

/** Writes keys as PKCS#8 PEM files named `<name>.pem` into a new temp folder. */
export function writeKeyDir(keys: ReadonlyArray<{ name: string; key: KeyObject }>): string {
  const dir = mkdtempSync(join(tmpdir(), 'keylessd-keys-'));
  for (const { name, key } of keys) writeFileSync(join(dir, `${name}.pem`), key.export({ format: 'pem', type: 'pkcs8' }));
  return dir;
}

export interface RunningDaemon {
  readonly daemon: Daemon;
  readonly addresses: DaemonAddresses;
  readonly pki: TestPki;
  readonly url: string;
  connect(client?: CertificateAndKey): Promise<KeylessSession>;
  /** Reloads with `extra` on top of the same PKI, as SIGHUP would. */
  reload(extra: Record<string, unknown>): Promise<boolean>;
  stop(): Promise<void>;
}

function testConfig(extra: Record<string, unknown>, pki: TestPki): Config {
  const config = validateConfig({
    listen: { host: '127.0.0.1', port: 1 },
    metrics: { host: '127.0.0.1', port: 1 },
    ...extra,
    tls: { cert: pki.files.serverCert, key: pki.files.serverKey, client_ca: pki.files.caCert, ...(extra.tls as object | undefined) },
    audit: { path: join(pki.dir, 'audit.log'), ...(extra.audit as object | undefined) },
  });
  // Port 0 is not a valid config value for operators; tests need ephemeral ports unless they name one.
  const fixedPort = (extra.listen as { port?: number } | undefined)?.port;
  return { ...config, listen: { ...config.listen, port: fixedPort ?? 0 }, metrics: { ...config.metrics, port: 0 }, compat: { ...config.compat, port: 0 } };
}

/** A real daemon on 127.0.0.1 with ephemeral ports, configured from `extra` on top of a test PKI. */
export async function startDaemon(extra: Record<string, unknown>, pki?: TestPki, makeBackend?: BackendFactory): Promise<RunningDaemon> {
  const testPki = pki ?? (await makeTestPki());
  const { daemon, addresses } = await Daemon.start(testConfig(extra, testPki), createLogger('silent'), makeBackend);
  const url = `wss://127.0.0.1:${addresses.v1.port}/v1`;
  return {
    daemon,
    addresses,
    pki: testPki,
    url,
    connect: (client = testPki.client) =>
      KeylessSession.connect({ url, ca: Buffer.from(testPki.ca.certPem), cert: Buffer.from(client.certPem), key: Buffer.from(client.keyPem) }),
    reload: (next) => daemon.reload(() => testConfig(next, testPki)),
    stop: () => daemon.shutdown(1000),
  };
}
