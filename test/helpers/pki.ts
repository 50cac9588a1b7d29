import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createCa, issueCertificate, type CertificateAndKey } from '../../src/pki/certificates';

export interface TestPki {
  readonly dir: string;
  readonly ca: CertificateAndKey;
  readonly server: CertificateAndKey;
  readonly client: CertificateAndKey;
  /** A client certificate from a CA the server does not trust. */
  readonly stranger: CertificateAndKey;
  readonly files: { caCert: string; serverCert: string; serverKey: string };
}

/** A fresh CA, server and client certificates, written to a temp folder for the daemon to read. */
export async function makeTestPki(clientOptions: { organizationalUnit?: string; commonName?: string } = {}): Promise<TestPki> {
  const dir = mkdtempSync(join(tmpdir(), 'keylessd-pki-'));
  const ca = await createCa({ commonName: 'test CA', days: 2 });
  const server = await issueCertificate(ca, 'server', { commonName: 'localhost', dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'], days: 2 });
  const client = await issueCertificate(ca, 'client', { commonName: clientOptions.commonName ?? 'test edge', organizationalUnit: clientOptions.organizationalUnit, days: 2 });
  const otherCa = await createCa({ commonName: 'other CA', days: 2 });
  const stranger = await issueCertificate(otherCa, 'client', { commonName: 'stranger', days: 2 });
  const files = { caCert: join(dir, 'ca.crt'), serverCert: join(dir, 'server.crt'), serverKey: join(dir, 'server.key') };
  writeFileSync(files.caCert, ca.certPem);
  writeFileSync(files.serverCert, server.certPem);
  writeFileSync(files.serverKey, server.keyPem);
  return { dir, ca, server, client, stranger, files };
}
