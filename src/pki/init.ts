import { generateKeyPairSync } from 'node:crypto';
import { mkdir, writeFile, access } from 'node:fs/promises';
import { join } from 'node:path';
import { KeylessdError } from '../errors';
import { createCa, issueCertificate, type CertificateAndKey } from './certificates';

/** The PKI folder is missing, unreadable or inconsistent, or an operation would break it. */
export class PkiError extends KeylessdError {
  readonly code = 'PKI';
}

export interface PkiOptions {
  readonly caName: string;
  readonly serverName: string;
  /** DNS names and IP addresses the server certificate is valid for. */
  readonly serverDnsNames: readonly string[];
  readonly serverIps: readonly string[];
  readonly clientName: string;
  readonly clientOrganization?: string;
  readonly clientOrganizationalUnit?: string;
  readonly caDays: number;
  readonly leafDays: number;
}

/** The file names `pki init` writes; the daemon's embedded default and keylessctl look for these. */
export const PKI_FILES = {
  caCert: 'ca.crt',
  caKey: 'ca.key',
  serverCert: 'server.crt',
  serverKey: 'server.key',
  clientCert: 'client.crt',
  clientKey: 'client.key',
  auditSigningKey: 'audit-signing.key',
  auditPublicKey: 'audit-signing.pub',
} as const;

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

async function writePair(dir: string, certName: string, keyName: string, pair: CertificateAndKey): Promise<void> {
  await writeFile(join(dir, certName), pair.certPem, { mode: 0o644 });
  await writeFile(join(dir, keyName), pair.keyPem, { mode: 0o600 });
}

/**
 * Writes a CA, a server and a client certificate into `dir`. Refuses to overwrite an
 * existing CA key: replacing it would silently invalidate every certificate it issued.
 */
export async function initPki(dir: string, options: PkiOptions): Promise<void> {
  if (await exists(join(dir, PKI_FILES.caKey))) {
    throw new PkiError(`${join(dir, PKI_FILES.caKey)} already exists; refusing to replace a CA (choose an empty folder)`);
  }
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const ca = await createCa({ commonName: options.caName, days: options.caDays });
  const server = await issueCertificate(ca, 'server', {
    commonName: options.serverName,
    dnsNames: options.serverDnsNames,
    ipAddresses: options.serverIps,
    days: options.leafDays,
  });
  const client = await issueCertificate(ca, 'client', {
    commonName: options.clientName,
    organization: options.clientOrganization,
    organizationalUnit: options.clientOrganizationalUnit,
    days: options.leafDays,
  });
  await writePair(dir, PKI_FILES.caCert, PKI_FILES.caKey, ca);
  await writePair(dir, PKI_FILES.serverCert, PKI_FILES.serverKey, server);
  await writePair(dir, PKI_FILES.clientCert, PKI_FILES.clientKey, client);
  await writeAuditSigningKey(dir);
}

/**
 * The audit signing key (Ed25519): signs the audit log's checkpoints. Separate from every
 * served key and from the TLS keys; its public half goes to whoever checks the log.
 */
export async function writeAuditSigningKey(dir: string): Promise<void> {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  await writeFile(join(dir, PKI_FILES.auditSigningKey), privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600, flag: 'wx' });
  await writeFile(join(dir, PKI_FILES.auditPublicKey), publicKey.export({ format: 'pem', type: 'spki' }), { mode: 0o644, flag: 'wx' });
}
