import 'reflect-metadata';
import { X509Crl } from '@peculiar/x509';
import { X509Certificate } from 'node:crypto';
import { closeSync, openSync, readFileSync, statSync, unlinkSync, constants } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { ConfigError } from '../errors';
import type { Config } from './schema';

/**
 * Checks that catch, before serving, what would otherwise only break at runtime: a server
 * certificate outside its validity period, an audit log that cannot be written, a port
 * another process holds. Each returns ConfigErrors naming the field and the cause;
 * `keylessd --check-config` reports them all, and startup refuses on the first.
 */

function certificateAt(path: string): X509Certificate | undefined {
  try {
    return new X509Certificate(readFileSync(path));
  } catch {
    return undefined; // unreadable or not PEM: loadTlsMaterial reports it with the field
  }
}

function crlNextUpdate(path: string): Date | undefined {
  try {
    return new X509Crl(readFileSync(path, 'utf8')).nextUpdate;
  } catch {
    return undefined; // unreadable: loadTlsMaterial names it; unparsable: the TLS stack refuses it
  }
}

/** The server certificate must be valid now; a client CA that has expired lets no edge in. */
export function certificateValidityProblems(tls: Pick<Config['tls'], 'cert' | 'client_ca' | 'crl'>, now = new Date()): ConfigError[] {
  const problems: ConfigError[] = [];
  const server = certificateAt(tls.cert);
  if (server) {
    const [from, to] = [new Date(server.validFrom), new Date(server.validTo)];
    if (to < now) problems.push(new ConfigError('tls.cert', `the server certificate ${tls.cert} expired on ${to.toISOString()}; renew it, then reload`));
    else if (from > now) problems.push(new ConfigError('tls.cert', `the server certificate ${tls.cert} is not valid until ${from.toISOString()} (check this machine's clock)`));
  }
  const ca = certificateAt(tls.client_ca);
  if (ca && new Date(ca.validTo) < now) {
    problems.push(new ConfigError('tls.client_ca', `the client CA certificate ${tls.client_ca} expired on ${new Date(ca.validTo).toISOString()}; no edge certificate can be verified`));
  }
  const nextUpdate = tls.crl === undefined ? undefined : crlNextUpdate(tls.crl);
  if (nextUpdate && nextUpdate < now) {
    problems.push(new ConfigError('tls.crl', `the CRL ${tls.crl} is past its next update (${nextUpdate.toISOString()}): every client handshake would fail; refresh it (keylessctl pki crl), then reload`));
  }
  return problems;
}

/**
 * The audit log's folder must exist and accept a new file, or the file must open for
 * appending. The check creates (and removes) a probe file, because permission bits do not
 * tell the truth for root or on read-only file systems.
 */
export function auditProblems(audit: Config['audit']): ConfigError[] {
  if (!audit.enabled || audit.path === undefined) return [];
  const path = audit.path;
  const dir = dirname(path);
  const why = (err: unknown) => (err as NodeJS.ErrnoException).code ?? (err as Error).message;
  try {
    const st = statSync(path);
    if (!st.isFile()) return [new ConfigError('audit.path', `${path} is not a regular file`)];
    closeSync(openSync(path, constants.O_WRONLY | constants.O_APPEND));
    return [];
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') return [new ConfigError('audit.path', `the audit log ${path} cannot be opened for writing: ${why(err)}`)];
  }
  try {
    if (!statSync(dir).isDirectory()) return [new ConfigError('audit.path', `${dir}, the folder of the audit log, is not a directory`)];
  } catch (err) {
    return [new ConfigError('audit.path', `the folder of the audit log, ${dir}, does not exist (${why(err)}); create it, writable by the service user`)];
  }
  const probe = join(dir, `.keylessd-check-${process.pid}`);
  try {
    closeSync(openSync(probe, 'wx', 0o600));
    unlinkSync(probe);
    return [];
  } catch (err) {
    return [new ConfigError('audit.path', `the folder of the audit log, ${dir}, is not writable: ${why(err)}`)];
  }
}

function tryListen(host: string, port: number): Promise<NodeJS.ErrnoException | undefined> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', (err) => resolve(err as NodeJS.ErrnoException));
    server.listen({ host, port, exclusive: true }, () => server.close(() => resolve(undefined)));
  });
}

/** Every listener the config enables must be able to bind its address. */
export async function listenProblems(config: Pick<Config, 'listen' | 'compat' | 'metrics'>): Promise<ConfigError[]> {
  const listeners: Array<[string, string, number]> = [['listen', config.listen.host, config.listen.port]];
  if (config.compat.enabled) listeners.push(['compat', config.compat.host, config.compat.port]);
  if (config.metrics.enabled) listeners.push(['metrics', config.metrics.host, config.metrics.port]);
  const problems: ConfigError[] = [];
  for (const [section, host, port] of listeners) {
    const err = await tryListen(host, port);
    if (!err) continue;
    if (err.code === 'EADDRINUSE') problems.push(new ConfigError(`${section}.port`, `${host}:${port} is already in use (EADDRINUSE): another process, perhaps another keylessd, listens there`));
    else if (err.code === 'EACCES') problems.push(new ConfigError(`${section}.port`, `binding ${host}:${port} is not permitted (EACCES): ports below 1024 need CAP_NET_BIND_SERVICE`));
    else if (err.code === 'EADDRNOTAVAIL' || err.code === 'ENOTFOUND' || err.code === 'EAI_AGAIN') problems.push(new ConfigError(`${section}.host`, `${host} is not an address of this machine (${err.code})`));
    else problems.push(new ConfigError(`${section}.port`, `cannot listen on ${host}:${port}: ${err.code ?? err.message}`));
  }
  return problems;
}

/** Zero keys served is a configuration that starts but answers KEY_NOT_FOUND to everything. */
export function noKeysProblem(served: number, skipped: ReadonlyArray<{ source: string; reason: string }>): ConfigError | undefined {
  if (served > 0) return undefined;
  const detail = skipped.length === 0 ? 'no backend found any key' : `every key was skipped: ${skipped.map((s) => `${s.source}: ${s.reason}`).join('; ')}`;
  return new ConfigError('backends', `no key would be served (${detail})`);
}
