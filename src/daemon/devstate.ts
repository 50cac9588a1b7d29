import { generateKeyPairSync } from 'node:crypto';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { PKI_FILES, initPki, writeAuditSigningKey } from '../pki/init';

/**
 * The embedded default: what `keylessd` serves when started with no config file. A
 * development PKI and three demo keys in a local state folder, made on first run and
 * reused after. Never meant for production: the CA key sits next to the daemon.
 */
export const DEMO_KEYS = {
  'demo-rsa2048': () => generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey,
  'demo-p256': () => generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey,
  'demo-ed25519': () => generateKeyPairSync('ed25519').privateKey,
} as const;

export const DEFAULT_STATE_DIR = '.keylessd';

export function stateDir(env: NodeJS.ProcessEnv = process.env, flag?: string): string {
  return resolve(flag ?? env.KEYLESSD_STATE_DIR ?? DEFAULT_STATE_DIR);
}

export function pkiDir(dir: string): string {
  return join(dir, 'pki');
}

/** Creates what is missing in `dir`; returns whether anything was created. */
export async function ensureDevState(dir: string): Promise<boolean> {
  let created = false;
  if (!existsSync(join(pkiDir(dir), PKI_FILES.caKey))) {
    await initPki(pkiDir(dir), {
      caName: 'keylessd development CA',
      serverName: 'localhost',
      serverDnsNames: ['localhost'],
      serverIps: ['127.0.0.1', '::1'],
      clientName: 'keylessd development edge',
      clientOrganization: 'keylessd development',
      caDays: 3650,
      leafDays: 825,
    });
    created = true;
  }
  if (!existsSync(join(pkiDir(dir), PKI_FILES.auditSigningKey))) {
    // A state folder made before audit signing existed gets its key now.
    await writeAuditSigningKey(pkiDir(dir));
    created = true;
  }
  const keys = join(dir, 'keys');
  mkdirSync(keys, { recursive: true, mode: 0o700 });
  for (const [name, generate] of Object.entries(DEMO_KEYS)) {
    const path = join(keys, `${name}.pem`);
    if (existsSync(path)) continue;
    writeFileSync(path, generate().export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
    created = true;
  }
  return created;
}

/** The raw config of the embedded default (validated by the same schema as a file). */
export function devConfig(dir: string): Record<string, unknown> {
  const pki = pkiDir(dir);
  return {
    listen: { host: '127.0.0.1', port: 2408 },
    tls: { cert: join(pki, PKI_FILES.serverCert), key: join(pki, PKI_FILES.serverKey), client_ca: join(pki, PKI_FILES.caCert) },
    metrics: { host: '127.0.0.1', port: 2406 },
    backends: [{ type: 'file', name: 'demo', dir: join(dir, 'keys') }],
    keys: { 'demo-rsa2048': { decrypt: true, decrypt_raw: true } },
    audit: { path: join(dir, 'audit.log'), signing_key: join(pki, PKI_FILES.auditSigningKey) },
  };
}
