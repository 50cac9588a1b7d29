import { X509Certificate, createPrivateKey, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Server, TLSSocket, TlsOptions } from 'node:tls';
import type { Logger } from '../log';
import type { Metrics } from '../metrics/metrics';
import type { ListenerName } from './session-info';
import { ConfigError } from '../errors';

/** TLS 1.2 suites allowed where 1.2 is enabled: forward secret (ECDHE) and AEAD only. */
export const TLS12_CIPHERS = [
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
].join(':');

export interface TlsFiles {
  readonly cert: string;
  readonly key: string;
  readonly client_ca: string;
  readonly crl?: string;
}

/** Certificates and keys read from disk, checked, ready to become a secure context. */
export interface TlsMaterial {
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly ca: Buffer;
  readonly crl?: Buffer;
  readonly serverNotAfter: Date;
  readonly clientCaNotAfter: Date;
}

/**
 * Session tickets are encrypted with these keys. One set per process, so reloading the
 * certificate does not invalidate every edge's resumption ticket.
 */
const TICKET_KEYS = randomBytes(48);

function readPem(field: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new ConfigError(field, `cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

function firstCertificate(field: string, path: string, pem: Buffer): X509Certificate {
  try {
    return new X509Certificate(pem);
  } catch {
    throw new ConfigError(field, `${path} holds no PEM certificate`);
  }
}

export function loadTlsMaterial(files: TlsFiles, prefix = 'tls'): TlsMaterial {
  const cert = readPem(`${prefix}.cert`, files.cert);
  const key = readPem(`${prefix}.key`, files.key);
  const ca = readPem(`${prefix}.client_ca`, files.client_ca);
  const crl = files.crl === undefined ? undefined : readPem(`${prefix}.crl`, files.crl);
  const server = firstCertificate(`${prefix}.cert`, files.cert, cert);
  const clientCa = firstCertificate(`${prefix}.client_ca`, files.client_ca, ca);
  try {
    if (!server.checkPrivateKey(createPrivateKey(key))) throw new ConfigError(`${prefix}.key`, `${files.key} is not the private key of ${files.cert}`);
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new ConfigError(`${prefix}.key`, `${files.key} holds no usable private key`);
  }
  return { cert, key, ca, crl, serverNotAfter: new Date(server.validTo), clientCaNotAfter: new Date(clientCa.validTo) };
}

/** Server options shared by both listeners: client certificates required and verified during the handshake. */
export function serverTlsOptions(material: TlsMaterial, minVersion: 'TLSv1.2' | 'TLSv1.3', handshakeTimeoutMs: number): TlsOptions {
  return {
    cert: material.cert,
    key: material.key,
    ca: material.ca,
    crl: material.crl,
    requestCert: true,
    rejectUnauthorized: true,
    minVersion,
    ciphers: TLS12_CIPHERS,
    honorCipherOrder: true,
    handshakeTimeout: handshakeTimeoutMs,
    ticketKeys: TICKET_KEYS,
  };
}

/**
 * Why a TLS handshake failed, as a bounded metric label. Node verifies the client
 * certificate at the end of the handshake and drops the connection; the verdict is then
 * in the socket's `authorizationError`, not in the error.
 */
export function handshakeFailureReason(
  err: NodeJS.ErrnoException,
  authorizationError?: Error | string | null,
): 'no_certificate' | 'unknown_ca' | 'expired' | 'timeout' | 'other' {
  const text = `${authorizationError ?? ''} ${err.code ?? ''} ${err.message}`;
  if (/PEER_DID_NOT_RETURN_A_CERTIFICATE|NO_CERTIFICATE/i.test(text)) return 'no_certificate';
  if (/EXPIRED/i.test(text)) return 'expired';
  if (/UNKNOWN_CA|UNABLE_TO_GET_ISSUER|UNABLE_TO_VERIFY|SELF_SIGNED|CERTIFICATE_VERIFY_FAILED|unable to verify|LOCAL_ISSUER/i.test(text)) return 'unknown_ca';
  if (/HANDSHAKE_TIMEOUT|timed? ?out/i.test(text)) return 'timeout';
  return 'other';
}

/**
 * What every listener does with its TLS server: cap concurrent connections and count the
 * refusals, classify and count failed handshakes, and forbid renegotiation.
 */
export function guardTlsServer(server: Server, listener: ListenerName, maxSessions: number, metrics: Metrics, logger: Logger): void {
  server.maxConnections = maxSessions;
  server.on('drop', () => metrics.connectionsRefused.inc({ listener, reason: 'max_sessions' }));
  server.on('tlsClientError', (err: NodeJS.ErrnoException, socket: TLSSocket) => {
    const reason = handshakeFailureReason(err, socket.authorizationError);
    metrics.handshakeFailures.inc({ listener, reason });
    logger.info({ listener, peer: `${socket.remoteAddress}:${socket.remotePort}`, reason, error: String(socket.authorizationError ?? err.code ?? err.message) }, 'TLS handshake failed');
  });
  server.on('secureConnection', (socket: TLSSocket) => {
    socket.disableRenegotiation();
    // Node reports a client's renegotiation attempt only as an 'error' on the socket and
    // lets the handshake go on; the HTTPS server behind keyless.v1 closes a socket on any
    // error, the compat port's plain TLS server does not. End the connection here, on
    // every listener, before the server does any work for the new handshake.
    let refused = false;
    socket.on('error', (err: NodeJS.ErrnoException) => {
      if (refused || (err.code !== 'ERR_TLS_RENEGOTIATION_DISABLED' && err.code !== 'ERR_TLS_SESSION_ATTACK')) return;
      refused = true;
      metrics.protocolErrors.inc({ listener, kind: 'renegotiation' });
      logger.warn({ listener, peer: `${socket.remoteAddress}:${socket.remotePort}` }, 'closing a connection that tried to renegotiate TLS');
      socket.destroy();
    });
  });
}
