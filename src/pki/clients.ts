import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { X509Certificate, createHash, webcrypto } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { issueCertificate, type CertificateAndKey } from './certificates';
import { PKI_FILES, PkiError } from './init';

x509.cryptoProvider.set(webcrypto as never);

/**
 * Edge certificates after `pki init`: more of them from the same CA, and a CRL (the file
 * `tls.crl` names) that lists the ones taken out of service. Kept apart from init.ts.
 */
export const CRL_FILE = 'crl.pem';
export const CLIENTS_DIR = 'clients';

const ALGORITHM = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const DAY_MS = 86_400_000;

export { PkiError };

function readCa(dir: string): CertificateAndKey {
  const read = (name: string) => {
    const path = join(dir, name);
    try {
      return readFileSync(path, 'utf8');
    } catch (err) {
      throw new PkiError(`cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message} (is ${dir} a folder made by keylessctl pki init?)`, { cause: err });
    }
  };
  return { certPem: read(PKI_FILES.caCert), keyPem: read(PKI_FILES.caKey) };
}

export interface ClientOptions {
  readonly organization?: string;
  readonly organizationalUnit?: string;
  readonly days: number;
}

export interface IssuedClient {
  readonly certFile: string;
  readonly keyFile: string;
  readonly serial: string;
  readonly sha256: string;
  readonly notAfter: Date;
}

/** A name usable as a file name and a certificate CN. */
function checkName(name: string): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(name)) throw new PkiError(`client name must be 1-64 letters, digits, '.', '_' or '-', got ${JSON.stringify(name)}`);
}

/**
 * Issues one more edge (client) certificate from the CA in `dir`: `clients/NAME.crt` and
 * `clients/NAME.key`. Refuses to replace an existing one. Creates an empty CRL if there is
 * none yet, so `tls.crl` can point at it from the start.
 */
export async function addClient(dir: string, name: string, options: ClientOptions): Promise<IssuedClient> {
  checkName(name);
  const ca = readCa(dir);
  const folder = join(dir, CLIENTS_DIR);
  const certFile = join(folder, `${name}.crt`);
  const keyFile = join(folder, `${name}.key`);
  if (existsSync(certFile) || existsSync(keyFile)) throw new PkiError(`${certFile} already exists; revoke it and choose another name (e.g. ${name}-2)`);
  mkdirSync(folder, { recursive: true, mode: 0o700 });
  const issued = await issueCertificate(ca, 'client', { commonName: name, organization: options.organization, organizationalUnit: options.organizationalUnit, days: options.days });
  writeFileSync(keyFile, issued.keyPem, { mode: 0o600, flag: 'wx' });
  writeFileSync(certFile, issued.certPem, { mode: 0o644, flag: 'wx' });
  if (!existsSync(join(dir, CRL_FILE))) await writeCrl(dir, ca, [], 90);
  const cert = new X509Certificate(issued.certPem);
  return { certFile, keyFile, serial: normalSerial(cert.serialNumber), sha256: fingerprint(cert), notAfter: new Date(cert.validTo) };
}

/** Serial numbers compared and shown as lower-case hex without leading zeros. */
function normalSerial(hex: string): string {
  return hex.toLowerCase().replace(/^0+(?=.)/, '');
}

function fingerprint(cert: X509Certificate): string {
  return createHash('sha256').update(cert.raw).digest('hex');
}

export interface RevokedEntry {
  readonly serial: string;
  readonly date: Date;
}

/** Hex of the INTEGER's content octets: whole bytes, and positive. */
function derSerial(hex: string): string {
  const even = hex.length % 2 ? `0${hex}` : hex;
  return parseInt(even.slice(0, 2), 16) >= 0x80 ? `00${even}` : even;
}

function readEntries(dir: string): RevokedEntry[] {
  const path = join(dir, CRL_FILE);
  if (!existsSync(path)) return [];
  const crl = new x509.X509Crl(readFileSync(path, 'utf8'));
  return crl.entries.map((e) => ({ serial: normalSerial(e.serialNumber), date: e.revocationDate }));
}

async function writeCrl(dir: string, ca: CertificateAndKey, entries: readonly RevokedEntry[], days: number): Promise<Date> {
  const issuer = new x509.X509Certificate(ca.certPem);
  const der = Buffer.from(ca.keyPem.replace(/-----[^-]+-----|\s/g, ''), 'base64');
  const signingKey = await webcrypto.subtle.importKey('pkcs8', der, ALGORITHM, false, ['sign']);
  // Backdated an hour, like certificates: a server whose clock is a little behind accepts it.
  const thisUpdate = new Date(Date.now() - 3_600_000);
  const nextUpdate = new Date(Date.now() + days * DAY_MS);
  const crl = await x509.X509CrlGenerator.create({
    issuer: issuer.subject,
    thisUpdate,
    nextUpdate,
    signingAlgorithm: ALGORITHM,
    signingKey: signingKey as never,
    entries: entries.map((e) => ({ serialNumber: derSerial(e.serial), revocationDate: e.date })),
    extensions: [await x509.AuthorityKeyIdentifierExtension.create(issuer)],
  });
  const path = join(dir, CRL_FILE);
  // Written beside and renamed, so a reload never reads half a file.
  // OpenSSL (and so Node's TLS) reads only the "X509 CRL" PEM label.
  const pem = crl.toString('pem').replace(/-----(BEGIN|END) CRL-----/g, '-----$1 X509 CRL-----');
  writeFileSync(`${path}.tmp`, `${pem}\n`, { mode: 0o644 });
  renameSync(`${path}.tmp`, path);
  return nextUpdate;
}

/** A certificate file, a client name under clients/, or a serial number in hex. */
export function serialOf(dir: string, what: string): { serial: string; label: string } {
  const candidates = [what, join(dir, CLIENTS_DIR, `${what}.crt`)];
  for (const path of candidates) {
    if (!existsSync(path)) continue;
    let cert: X509Certificate;
    try {
      cert = new X509Certificate(readFileSync(path));
    } catch {
      throw new PkiError(`${path} holds no PEM certificate`);
    }
    const ca = new X509Certificate(readCa(dir).certPem);
    if (!cert.checkIssued(ca) || !cert.verify(ca.publicKey)) throw new PkiError(`${path} was not issued by the CA in ${join(dir, PKI_FILES.caCert)}; its CRL cannot revoke it`);
    return { serial: normalSerial(cert.serialNumber), label: `${path} (${cert.subject.replace(/\n/g, ', ')})` };
  }
  const hex = what.replace(/:/g, '').toLowerCase();
  if (/^[0-9a-f]{1,40}$/.test(hex)) return { serial: normalSerial(hex), label: `serial ${hex}` };
  throw new PkiError(`${what} is neither a certificate file, a client under ${join(dir, CLIENTS_DIR)}, nor a serial number in hex`);
}

/**
 * Adds a certificate to the CRL in `dir` (re-signed, valid for `days`). The daemon reads it
 * on the next SIGHUP; from then on the certificate's handshakes are refused.
 */
export async function revoke(dir: string, what: string, days: number): Promise<{ serial: string; label: string; already: boolean; nextUpdate: Date; crlFile: string }> {
  const ca = readCa(dir);
  const { serial, label } = serialOf(dir, what);
  const entries = readEntries(dir);
  const already = entries.some((e) => e.serial === serial);
  const nextUpdate = await writeCrl(dir, ca, already ? entries : [...entries, { serial, date: new Date() }], days);
  return { serial, label, already, nextUpdate, crlFile: join(dir, CRL_FILE) };
}

/** Re-signs the CRL with the same entries and a new validity (a CRL past its next update makes every handshake fail). */
export async function refreshCrl(dir: string, days: number): Promise<{ entries: number; nextUpdate: Date; crlFile: string }> {
  const ca = readCa(dir);
  const entries = readEntries(dir);
  const nextUpdate = await writeCrl(dir, ca, entries, days);
  return { entries: entries.length, nextUpdate, crlFile: join(dir, CRL_FILE) };
}
