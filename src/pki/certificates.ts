import 'reflect-metadata'; // @peculiar/x509 resolves its ASN.1 schemas through tsyringe, which needs it.
import * as x509 from '@peculiar/x509';
import { randomBytes, webcrypto } from 'node:crypto';

x509.cryptoProvider.set(webcrypto as never);

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;

const ALGORITHM = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const DAY_MS = 86_400_000;

export interface CertificateAndKey {
  readonly certPem: string;
  /** PKCS#8 PEM. */
  readonly keyPem: string;
}

interface Issuer {
  readonly certificate: x509.X509Certificate;
  readonly privateKey: CryptoKey;
}

export interface SubjectOptions {
  readonly commonName: string;
  readonly organization?: string;
  readonly organizationalUnit?: string;
  readonly dnsNames?: readonly string[];
  readonly ipAddresses?: readonly string[];
  readonly uris?: readonly string[];
  readonly days: number;
  /** Start of validity; default an hour ago. */
  readonly notBefore?: Date;
}

/** RFC 4514 string; commas and other specials in a value are escaped. */
function distinguishedName(options: SubjectOptions): string {
  const escape = (value: string) => value.replace(/([,+"\\<>;=#])/g, '\\$1');
  const parts = [`CN=${escape(options.commonName)}`];
  if (options.organization) parts.push(`O=${escape(options.organization)}`);
  if (options.organizationalUnit) parts.push(`OU=${escape(options.organizationalUnit)}`);
  return parts.join(', ');
}

function serialNumber(): string {
  const bytes = randomBytes(16);
  bytes[0]! &= 0x7f; // a positive INTEGER
  return bytes.toString('hex');
}

function validity(options: SubjectOptions): { notBefore: Date; notAfter: Date } {
  // Backdated an hour so a client whose clock runs slightly behind still accepts a fresh certificate.
  const notBefore = options.notBefore ?? new Date(Date.now() - 3_600_000);
  return { notBefore, notAfter: new Date(notBefore.getTime() + options.days * DAY_MS) };
}

async function exportKeyPem(key: CryptoKey): Promise<string> {
  const der = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', key));
  return `-----BEGIN PRIVATE KEY-----\n${der.toString('base64').replace(/.{64}/g, '$&\n').replace(/\n?$/, '\n')}-----END PRIVATE KEY-----\n`;
}

async function generateKeys(): Promise<CryptoKeyPair> {
  return (await webcrypto.subtle.generateKey(ALGORITHM, true, ['sign', 'verify'])) as CryptoKeyPair;
}

export async function createCa(options: SubjectOptions): Promise<CertificateAndKey> {
  const keys = await generateKeys();
  const certificate = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serialNumber(),
    name: distinguishedName(options),
    ...validity(options),
    keys: keys as never,
    signingAlgorithm: ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey as never),
    ],
  });
  return { certPem: certificate.toString('pem') + '\n', keyPem: await exportKeyPem(keys.privateKey) };
}

async function loadIssuer(ca: CertificateAndKey): Promise<Issuer> {
  const certificate = new x509.X509Certificate(ca.certPem);
  const der = Buffer.from(ca.keyPem.replace(/-----[^-]+-----|\s/g, ''), 'base64');
  const privateKey = await webcrypto.subtle.importKey('pkcs8', der, ALGORITHM, false, ['sign']);
  return { certificate, privateKey };
}

/** Issues a leaf certificate for a TLS server or client, signed by `ca`. */
export async function issueCertificate(
  ca: CertificateAndKey,
  usage: 'server' | 'client',
  options: SubjectOptions,
): Promise<CertificateAndKey> {
  const issuer = await loadIssuer(ca);
  const keys = await generateKeys();
  const names: x509.JsonGeneralName[] = [
    ...(options.dnsNames ?? []).map((value) => ({ type: 'dns' as const, value })),
    ...(options.ipAddresses ?? []).map((value) => ({ type: 'ip' as const, value })),
    ...(options.uris ?? []).map((value) => ({ type: 'url' as const, value })),
  ];
  const certificate = await x509.X509CertificateGenerator.create({
    serialNumber: serialNumber(),
    subject: distinguishedName(options),
    issuer: issuer.certificate.subject,
    ...validity(options),
    publicKey: keys.publicKey as never,
    signingKey: issuer.privateKey as never,
    signingAlgorithm: ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyAgreement, true),
      new x509.ExtendedKeyUsageExtension([usage === 'server' ? x509.ExtendedKeyUsage.serverAuth : x509.ExtendedKeyUsage.clientAuth]),
      ...(names.length > 0 ? [new x509.SubjectAlternativeNameExtension(names)] : []),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey as never),
      await x509.AuthorityKeyIdentifierExtension.create(issuer.certificate),
    ],
  });
  return { certPem: certificate.toString('pem') + '\n', keyPem: await exportKeyPem(keys.privateKey) };
}
