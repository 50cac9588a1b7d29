import type { X509Certificate } from 'node:crypto';

/** Who a session is: facts from its client certificate, fixed for the session's life. */
export interface ClientIdentity {
  /** The subject as Node prints it (`CN=edge-fra1\nO=Example`), for logs and the audit trail. */
  readonly subject: string;
  readonly commonNames: readonly string[];
  readonly organizations: readonly string[];
  readonly organizationalUnits: readonly string[];
  readonly sanDns: readonly string[];
  readonly sanUri: readonly string[];
  /** SHA-256 of the certificate DER, lowercase hex without separators. */
  readonly fingerprint: string;
}

function attribute(subject: string, name: string): string[] {
  return subject
    .split('\n')
    .filter((line) => line.startsWith(`${name}=`))
    .map((line) => line.slice(name.length + 1));
}

/** Splits Node's subjectAltName text (`DNS:a, URI:b, IP Address:c`) into DNS names and URIs. */
function altNames(text: string | undefined): { dns: string[]; uri: string[] } {
  const dns: string[] = [];
  const uri: string[] = [];
  for (const entry of (text ?? '').split(/,\s*/)) {
    if (entry.startsWith('DNS:')) dns.push(entry.slice(4));
    else if (entry.startsWith('URI:')) uri.push(entry.slice(4));
  }
  return { dns, uri };
}

export function identityFromCertificate(certificate: X509Certificate): ClientIdentity {
  const names = altNames(certificate.subjectAltName);
  return {
    subject: certificate.subject,
    commonNames: attribute(certificate.subject, 'CN'),
    organizations: attribute(certificate.subject, 'O'),
    organizationalUnits: attribute(certificate.subject, 'OU'),
    sanDns: names.dns,
    sanUri: names.uri,
    fingerprint: certificate.fingerprint256.replace(/:/g, '').toLowerCase(),
  };
}
