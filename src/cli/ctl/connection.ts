import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { KeylessSession, type SessionOptions } from '../../client/session';
import { pkiDir, stateDir } from '../../daemon/devstate';
import { PKI_FILES } from '../../pki/init';
import { KeylessdError } from '../../errors';
import { describeFsError } from './io';
import { WrongProtocolError } from './exit';

export const CONNECTION_HELP = `Connection (flags, else environment, else the embedded default's state folder):
  --server URL       wss://host:port/v1 or host:port     ($KEYLESS_SERVER; default wss://127.0.0.1:2408/v1)
  --ca FILE          CA bundle the server certificate must chain to   ($KEYLESS_CA)
  --client-cert FILE client certificate                                ($KEYLESS_CLIENT_CERT)
  --client-key FILE  client private key                                ($KEYLESS_CLIENT_KEY)
  --servername NAME  name to expect in the server certificate
  --state-dir DIR    embedded default's folder ($KEYLESSD_STATE_DIR; default ./.keylessd)
  --timeout-ms N     per-request timeout (default 30000)`;

export const CONNECTION_OPTIONS = {
  server: { type: 'string' },
  ca: { type: 'string' },
  'client-cert': { type: 'string' },
  'client-key': { type: 'string' },
  servername: { type: 'string' },
  'state-dir': { type: 'string' },
  'timeout-ms': { type: 'string' },
} as const;

export interface ConnectionFlags {
  server?: string;
  ca?: string;
  'client-cert'?: string;
  'client-key'?: string;
  servername?: string;
  'state-dir'?: string;
  'timeout-ms'?: string;
}

/** The command line is wrong: exit status 2 with the message. */
export class UsageError extends KeylessdError {
  readonly code = 'USAGE';
}

function readNamed(what: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new UsageError(`cannot read the ${what} ${path}: ${describeFsError(err)}`, { cause: err });
  }
}

export function serverUrl(server: string): string {
  if (/^wss:\/\//.test(server)) return server;
  if (/^\w+:\/\//.test(server)) throw new UsageError(`--server must be a wss:// URL or host:port, got ${server} (keyless.v1 is TLS only)`);
  return `wss://${server}/v1`;
}

/** Where to connect and with which credentials: flags, else environment, else the embedded default. */
export function sessionOptions(flags: ConnectionFlags, env: NodeJS.ProcessEnv = process.env): SessionOptions {
  const pki = pkiDir(stateDir(env, flags['state-dir']));
  const fallback = (name: string) => (existsSync(join(pki, name)) ? join(pki, name) : undefined);
  const files = {
    ca: flags.ca ?? env.KEYLESS_CA ?? fallback(PKI_FILES.caCert),
    'client-cert': flags['client-cert'] ?? env.KEYLESS_CLIENT_CERT ?? fallback(PKI_FILES.clientCert),
    'client-key': flags['client-key'] ?? env.KEYLESS_CLIENT_KEY ?? fallback(PKI_FILES.clientKey),
  };
  for (const [what, path] of Object.entries(files)) {
    if (!path) throw new UsageError(`no --${what} given, $KEYLESS_${what.toUpperCase().replace('-', '_')} unset, and no embedded default in ${pki}`);
  }
  const timeout = flags['timeout-ms'] === undefined ? 30_000 : Number(flags['timeout-ms']);
  if (!Number.isInteger(timeout) || timeout <= 0) throw new UsageError(`--timeout-ms must be a positive whole number, got ${flags['timeout-ms']}`);
  return {
    url: serverUrl(flags.server ?? env.KEYLESS_SERVER ?? 'wss://127.0.0.1:2408/v1'),
    ca: readNamed('CA bundle', files.ca!),
    cert: readNamed('client certificate', files['client-cert']!),
    key: readNamed('client key', files['client-key']!),
    servername: flags.servername,
    requestTimeoutMs: timeout,
    files: { ca: files.ca, cert: files['client-cert'] },
  };
}

/** A connect error that shows the port speaks the Cloudflare protocol, explained; others unchanged. */
export function explainV1ConnectError(err: unknown, url: string): unknown {
  if (/Unexpected server response: 421/.test((err as Error)?.message ?? '')) {
    return new WrongProtocolError(`${url} is a Cloudflare Keyless protocol port (the compatibility port), not keyless.v1: add --protocol cloudflare, or connect to the keyless.v1 port (2408 by default)`);
  }
  return err;
}

export function openSession(flags: ConnectionFlags, env: NodeJS.ProcessEnv = process.env): Promise<KeylessSession> {
  const options = sessionOptions(flags, env);
  return KeylessSession.connect(options).catch((err: unknown) => {
    throw explainV1ConnectError(err, options.url);
  });
}
