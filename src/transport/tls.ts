import { X509Certificate, createPrivateKey, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import type { Server, TLSSocket, TlsOptions } from 'node:tls';
import type { Logger } from '../log';
import type { Metrics } from '../metrics/metrics';
import type { ListenerName } from '../core/request';
import { ConfigError } from '../errors';
import { LogLimiter } from '../util/log-limiter';

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
    throw new ConfigError(field, `cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
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

/** How many connections a listener takes, and in which state. */
export interface ConnectionLimits {
  /** Connections whose TLS handshake has finished (sessions). */
  readonly maxSessions: number;
  /** Connections accepted whose TLS handshake has not finished, in total … */
  readonly maxPendingHandshakes: number;
  /** … and from one source address. */
  readonly maxPendingHandshakesPerAddress: number;
}

/** The listener options' limits, with the configuration defaults for those not given. */
export function connectionLimits(options: { maxSessions: number; maxPendingHandshakes?: number; maxPendingHandshakesPerAddress?: number }): ConnectionLimits {
  return {
    maxSessions: options.maxSessions,
    maxPendingHandshakes: options.maxPendingHandshakes ?? 1_000,
    maxPendingHandshakesPerAddress: options.maxPendingHandshakesPerAddress ?? 64,
  };
}

/** Where a connection came from, read from the raw TCP socket before TLS starts. */
interface Peer {
  readonly address: string;
  readonly port: number;
  pending: boolean;
}

/** The parts of Node's TCP handle (tcp_wrap) used to refuse a connection before it becomes a socket. */
interface RawHandle {
  getpeername(out: { address?: string; port?: number }): number;
  reset?(): number;
  close(): void;
}

/** The raw TCP socket a server-side TLS socket wraps (Node keeps it as `_parent`). */
const rawSocketOf = (socket: TLSSocket): Socket | undefined => (socket as TLSSocket & { _parent?: Socket })._parent;

/**
 * What every listener does with its TLS server: admit connections in two stages, classify
 * and count failed handshakes, and forbid renegotiation.
 *
 * A connection still in its TLS handshake is not a session: it has proved nothing, so it
 * counts against `maxPendingHandshakes` (and, per source address,
 * `maxPendingHandshakesPerAddress`), not against `maxSessions`. The check runs on the raw
 * TCP socket, before Node creates any TLS state for it, and a refused connection is reset
 * at once. Only a finished handshake counts against `maxSessions`. So a flood of idle TCP
 * connections from one address holds at most its per-address share of handshake slots
 * (each for at most the handshake timeout) and cannot keep edges from other addresses out.
 */
export function guardTlsServer(server: Server, listener: ListenerName, limits: ConnectionLimits, metrics: Metrics, logger: Logger): LogLimiter {
  // Strangers cause these log lines at will: a bounded number per interval, then a count.
  const logs = new LogLimiter(logger);
  const peers = new WeakMap<Socket, Peer>();
  const pendingByAddress = new Map<string, number>();
  let pending = 0;
  let established = 0;
  const pendingGauge = metrics.handshakesPending.labels({ listener });
  pendingGauge.set(0);

  const counted = (reason: string, address: string | undefined, port: number | undefined) => {
    metrics.connectionsRefused.inc({ listener, reason });
    logs.log('warn', `connection_refused/${listener}/${reason}`, { listener, peer: `${address}:${port}`, reason }, 'connection refused before the TLS handshake');
  };
  const refuse = (raw: Socket, reason: string) => {
    counted(reason, raw.remoteAddress, raw.remotePort);
    raw.on('error', () => {});
    raw.resetAndDestroy();
  };
  const settle = (peer: Peer) => {
    if (!peer.pending) return;
    peer.pending = false;
    pending -= 1;
    const left = (pendingByAddress.get(peer.address) ?? 1) - 1;
    if (left > 0) pendingByAddress.set(peer.address, left);
    else pendingByAddress.delete(peer.address);
    pendingGauge.dec();
  };

  /** Why a new connection from `address` is refused, if it is. */
  const refusal = (address: string): string | undefined => {
    if (established >= limits.maxSessions) return 'max_sessions';
    if ((pendingByAddress.get(address) ?? 0) >= limits.maxPendingHandshakesPerAddress) return 'max_pending_handshakes_per_address';
    if (pending >= limits.maxPendingHandshakes) return 'max_pending_handshakes';
    return undefined;
  };

  // Refuse before Node builds a socket: a flood then costs a few bytes of garbage per
  // connection instead of a net.Socket each, which kept the heap grown after a flood.
  // Node's TCP server hands each accepted handle to `_handle.onconnection` (its own
  // maxConnections check closes handles there too); if that ever changes, the
  // 'connection' check below still refuses, only later.
  server.once('listening', () => {
    const handle = (server as unknown as { _handle?: { onconnection?: (err: number, client?: RawHandle) => void } })._handle;
    const accept = handle?.onconnection;
    if (!handle || typeof accept !== 'function') return;
    handle.onconnection = function (this: unknown, err: number, client?: RawHandle) {
      if (!err && client && typeof client.getpeername === 'function') {
        const peer: { address?: string; port?: number } = {};
        client.getpeername(peer);
        const reason = peer.address === undefined ? undefined : refusal(peer.address);
        if (reason) {
          counted(reason, peer.address, peer.port);
          if (typeof client.reset === 'function') client.reset();
          else client.close();
          return;
        }
      }
      accept.call(this, err, client);
    };
  });

  // Node's own 'connection' listener wraps the raw socket in a TLSSocket (and allocates
  // OpenSSL state); it runs only for connections admitted here.
  const startTls = server.listeners('connection') as Array<(this: Server, raw: Socket) => void>;
  server.removeAllListeners('connection');
  server.on('connection', (raw: Socket) => {
    const { remoteAddress: address, remotePort: port } = raw;
    if (address === undefined || port === undefined) return void raw.destroy(); // closed before we saw it
    const reason = refusal(address);
    if (reason) return refuse(raw, reason);
    const fromAddress = pendingByAddress.get(address) ?? 0;
    pending += 1;
    pendingByAddress.set(address, fromAddress + 1);
    pendingGauge.inc();
    const peer: Peer = { address, port, pending: true };
    peers.set(raw, peer);
    raw.once('close', () => settle(peer));
    for (const listen of startTls) listen.call(server, raw);
  });

  server.on('tlsClientError', (err: NodeJS.ErrnoException, socket: TLSSocket) => {
    const reason = handshakeFailureReason(err, socket.authorizationError);
    metrics.handshakeFailures.inc({ listener, reason });
    // By now Node has destroyed the socket and forgotten its address: use the one read on connect.
    const raw = rawSocketOf(socket);
    const peer = raw && peers.get(raw);
    const from = peer ? `${peer.address}:${peer.port}` : `${socket.remoteAddress}:${socket.remotePort}`;
    logs.log('info', `handshake_failed/${listener}`, { listener, peer: from, reason, error: String(socket.authorizationError ?? err.code ?? err.message) }, 'TLS handshake failed');
  });
  // First, so a connection over max_sessions is gone before the listener sees it.
  server.prependListener('secureConnection', (socket: TLSSocket) => {
    const raw = rawSocketOf(socket);
    const peer = raw && peers.get(raw);
    if (peer) settle(peer);
    if (established >= limits.maxSessions) {
      // Handshakes that finish together can overshoot the check made when they connected.
      counted('max_sessions', peer?.address, peer?.port);
      socket.destroy();
      return;
    }
    established += 1;
    socket.once('close', () => {
      established -= 1;
    });
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
      logs.log('warn', `renegotiation/${listener}`, { listener, peer: `${socket.remoteAddress}:${socket.remotePort}` }, 'closing a connection that tried to renegotiate TLS');
      socket.destroy();
    });
  });
  return logs;
}
