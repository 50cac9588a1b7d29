import { readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, extname, isAbsolute, join, resolve } from 'node:path';
import { parsePrivateKey } from '../../backends/file/parse';

/**
 * Reads a gokeyless.yaml (the reference Keyless server's config) as a keylessd config, so
 * an operator can point keylessd at the file they have. Every key it does not use is
 * reported with the reason.
 */
export interface ConversionNote {
  readonly key: string;
  readonly why: string;
}

const GOKEYLESS_ONLY = ['private_key_stores', 'auth_cert', 'auth_key', 'cloudflare_ca_cert', 'metrics_port'];

/** Known gokeyless settings keylessd has no use for, and why. */
const IGNORED: Readonly<Record<string, string>> = {
  hostname: 'keylessd does not register with the Cloudflare API; the edge is configured on the Cloudflare side',
  zone_id: 'keylessd does not register with the Cloudflare API',
  origin_ca_api_key: 'keylessd does not provision certificates through the Cloudflare API; use `keylessctl pki init` or your own CA',
  auth_csr: 'keylessd does not request certificates; put the issued certificate in auth_cert',
  cert_file: 'certificate files are not needed: keys are found by SKI or by certificate digest computed from the key itself',
  tracing_enabled: 'tracing is not implemented; keylessd writes an audit log instead',
  tracing_address: 'tracing is not implemented',
  tracing_sample_ratio: 'tracing is not implemented',
  limited_cipher_suites: 'keylessd always limits TLS 1.2 to ECDHE with AES-GCM or ChaCha20-Poly1305',
  current_time: 'not a setting keylessd needs',
};

/** gokeyless logs through cfssl's logger: 0 debug, 1 info, 2 warning, 3 error, 4 critical, 5 fatal. Names are accepted too. */
function logLevel(value: unknown): string | undefined {
  if (typeof value === 'number') return ['debug', 'info', 'warn', 'error', 'fatal', 'fatal'][value];
  if (typeof value === 'string') return { debug: 'debug', info: 'info', warn: 'warn', warning: 'warn', error: 'error', fatal: 'fatal', critical: 'fatal' }[value.toLowerCase()];
  return undefined;
}

export function looksLikeGokeylessConfig(raw: Record<string, unknown>): boolean {
  return GOKEYLESS_ONLY.some((key) => key in raw);
}

/**
 * Names of the unencrypted RSA keys a file store serves, named as the file backend names
 * them (file name without extension). gokeyless lets every RSA key decrypt; these are the
 * keys whose decrypt the converted config keeps.
 */
function rsaKeyNames(store: { dir?: string; file?: string }, baseDir: string): string[] {
  const at = (path: string) => (isAbsolute(path) ? path : resolve(baseDir, path));
  let paths: string[] = [];
  try {
    if (store.file !== undefined) paths = [at(store.file)];
    else if (store.dir !== undefined) {
      const dir = at(store.dir);
      paths = readdirSync(dir)
        .filter((entry) => !entry.startsWith('.'))
        .map((entry) => join(dir, entry))
        .filter((path) => {
          try {
            return statSync(path).isFile();
          } catch {
            return false;
          }
        });
    }
  } catch {
    return []; // the backend reports an unreadable folder when it opens
  }
  return paths.flatMap((path) => {
    try {
      return parsePrivateKey(readFileSync(path), undefined).asymmetricKeyType === 'rsa' ? [basename(path, extname(path))] : [];
    } catch {
      return [];
    }
  });
}

/**
 * `baseDir` is the gokeyless.yaml's folder: relative key paths are read from there to find
 * the RSA keys, which keep their ability to decrypt.
 */
export function convertGokeylessConfig(raw: Record<string, unknown>, baseDir = process.cwd()): { config: Record<string, unknown>; notes: ConversionNote[] } {
  const notes: ConversionNote[] = [];
  const config: Record<string, unknown> = {
    // The compat port is where existing edges connect; gokeyless listens on every interface.
    compat: { enabled: true, host: '0.0.0.0', port: raw.port ?? 2407 },
    tls: { cert: raw.auth_cert, key: raw.auth_key, client_ca: raw.cloudflare_ca_cert },
    audit: { path: 'audit.log' },
  };
  notes.push({ key: '(new)', why: 'keylessd writes an audit log; it goes to audit.log beside this file (set audit.path to move it)' });
  if (raw.metrics_port !== undefined) {
    config.metrics = { host: '0.0.0.0', port: raw.metrics_port };
    notes.push({ key: 'metrics_port', why: 'metrics and health listen on 0.0.0.0 as gokeyless did; set metrics.host to 127.0.0.1 to keep them local' });
  }
  const level = logLevel(raw.loglevel);
  if (raw.loglevel !== undefined) {
    if (level) config.log = { level };
    else notes.push({ key: 'loglevel', why: `unknown level ${JSON.stringify(raw.loglevel)}; keeping info` });
  }
  if (raw.pid_file !== undefined) config.pid_file = raw.pid_file;
  const backends: Array<Record<string, unknown>> = [];
  const stores = Array.isArray(raw.private_key_stores) ? raw.private_key_stores : [];
  stores.forEach((store: Record<string, unknown>, i: number) => {
    if (typeof store?.dir === 'string') backends.push({ type: 'file', name: `keys-${i + 1}`, dir: store.dir });
    else if (typeof store?.file === 'string') backends.push({ type: 'file', name: `keys-${i + 1}`, files: [{ path: store.file }] });
    else if (typeof store?.uri === 'string') backends.push({ type: 'pkcs11', name: `hsm-${i + 1}`, uri: store.uri });
    else notes.push({ key: `private_key_stores[${i}]`, why: 'has none of dir, file or uri' });
  });
  config.backends = backends;
  // gokeyless decrypts with any RSA key (TLS 1.2 RSA key exchange); keylessd allows it per key.
  const rsa = [...new Set(stores.flatMap((store: { dir?: string; file?: string }) => (typeof store?.dir === 'string' || typeof store?.file === 'string' ? rsaKeyNames(store, baseDir) : [])))].sort();
  if (rsa.length > 0) {
    config.keys = Object.fromEntries(rsa.map((name) => [name, { decrypt: true, decrypt_raw: true }]));
    notes.push({
      key: '(decrypt)',
      why:
        `RSA keys ${rsa.join(', ')} may decrypt (decrypt: true, decrypt_raw: true) as gokeyless allowed, so TLS 1.2 handshakes with RSA key exchange keep working. ` +
        'To narrow it, convert this file (keylessctl config convert) and set keys.NAME.decrypt_raw: false for keys whose edges use only ECDHE, or give a key a policy with operations: [sign]',
    });
  }
  if (backends.some((b) => b.type === 'pkcs11')) {
    notes.push({
      key: '(decrypt)',
      why: 'RSA keys on a PKCS#11 token do not decrypt unless allowed: add keys.LABEL: {decrypt: true, decrypt_raw: true} for those used with TLS 1.2 RSA key exchange',
    });
  }
  const used = new Set(['port', 'metrics_port', 'auth_cert', 'auth_key', 'cloudflare_ca_cert', 'private_key_stores', 'loglevel', 'pid_file']);
  for (const key of Object.keys(raw)) {
    if (used.has(key)) continue;
    notes.push({ key, why: IGNORED[key] ?? 'not a gokeyless setting keylessd knows' });
  }
  return { config, notes };
}
