/**
 * The edge, for real: the PKCS#11 module built with gcc, keylessd-agent as its own process,
 * nginx and Apache httpd (as `nobody` when the tests run as root, as CI does) and
 * openssl/curl/pkcs11-tool.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { keyless } from '../../src/gen/keyless';
import { decodeResponse, encodeRequest } from '../../src/protocols/v1/codec';
import type { TestPki } from '../helpers/pki';
import { GiveUp, until } from '../helpers/until';
import { auditRecords } from '../helpers/audit';

export const ROOT = resolve(__dirname, '../..');
export const MODULE = join(ROOT, 'build/pkcs11/libkeylessd-pkcs11.so');
const MODULE_SOURCE = join(ROOT, 'src/edge/pkcs11-module/keylessd-pkcs11.c');
const AGENT_CLI = join(ROOT, 'dist/src/cli/keylessd-agent.js');
export const ENGINE = '/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so';
export const IS_ROOT = process.getuid?.() === 0;

/** Builds the module when it is missing or older than its source (CI builds it before the tests too). */
export function ensureModule(): string {
  if (!existsSync(MODULE) || statSync(MODULE).mtimeMs < statSync(MODULE_SOURCE).mtimeMs) {
    execFileSync(join(ROOT, 'scripts/build-pkcs11-module.sh'), [], { stdio: 'pipe' });
  }
  if (!existsSync(AGENT_CLI)) throw new Error(`${AGENT_CLI} is missing: run npm run build first`);
  return MODULE;
}

/** A temp folder everyone may traverse and read (nginx workers run as nobody). */
export function openDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  chmodSync(dir, 0o755);
  return dir;
}

export interface RunResult {
  code: number | null;
  /** True when the command outlived `timeoutMs` and was killed: it hung. */
  killed: boolean;
  stdout: string;
  stderr: string;
  ms: number;
}

export function run(cmd: string, args: readonly string[], options: { env?: NodeJS.ProcessEnv; input?: string | Buffer; timeoutMs?: number } = {}): Promise<RunResult> {
  const started = Date.now();
  return new Promise((resolvePromise) => {
    const child = spawn(cmd, args, { env: { ...process.env, ...options.env }, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout!.on('data', (d: Buffer) => out.push(d));
    child.stderr!.on('data', (d: Buffer) => err.push(d));
    let killed = false;
    const timer = setTimeout(() => {
      killed = true;
      child.kill('SIGKILL');
    }, options.timeoutMs ?? 20_000);
    child.once('error', (e) => err.push(Buffer.from(String(e))));
    child.once('close', (code) => {
      clearTimeout(timer);
      resolvePromise({ code, killed, stdout: Buffer.concat(out).toString('latin1'), stderr: Buffer.concat(err).toString('latin1'), ms: Date.now() - started });
    });
    child.stdin!.on('error', () => undefined);
    child.stdin!.end(options.input ?? '');
  });
}

function canConnect(target: { port: number } | { path: string }): Promise<boolean> {
  return new Promise((resolvePromise) => {
    const socket = 'port' in target ? connect(target.port, '127.0.0.1') : connect(target.path);
    socket.once('connect', () => {
      socket.destroy();
      resolvePromise(true);
    });
    socket.once('error', () => resolvePromise(false));
  });
}

/** One keyless.v1 request over the agent's socket, as the module sends it. */
export function agentRequest(path: string, request: keyless.v1.Request.$Properties, timeoutMs = 5000): Promise<keyless.v1.Response> {
  return new Promise((resolvePromise, reject) => {
    const socket = connect(path);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error('no answer from the agent'));
    }, timeoutMs);
    let data = Buffer.alloc(0);
    socket.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    socket.on('data', (chunk: Buffer) => {
      data = Buffer.concat([data, chunk]);
      if (data.length >= 4 && data.length >= 4 + data.readUInt32BE(0)) {
        clearTimeout(timer);
        socket.destroy();
        resolvePromise(decodeResponse(data.subarray(4, 4 + data.readUInt32BE(0))));
      }
    });
    socket.once('close', () => {
      clearTimeout(timer);
      reject(new Error('the agent closed the connection'));
    });
    const body = encodeRequest(request);
    const header = Buffer.alloc(4);
    header.writeUInt32BE(body.length, 0);
    socket.write(Buffer.concat([header, body]));
  });
}

export interface Agent {
  readonly socket: string;
  readonly process: ChildProcess;
  readonly log: () => string;
  readonly metricsPort: number;
  stop(): Promise<void>;
}

/** keylessd-agent as a separate process, its socket in a folder nginx's workers can reach. */
export async function startAgent(pki: TestPki, urls: readonly string[], options: { socketDir?: string; metricsPort?: number; extra?: string[] } = {}): Promise<Agent> {
  const dir = options.socketDir ?? openDir('keylessd-agent-');
  const clientCert = join(pki.dir, 'agent-client.crt');
  const clientKey = join(pki.dir, 'agent-client.key');
  writeFileSync(clientCert, pki.client.certPem);
  writeFileSync(clientKey, pki.client.keyPem, { mode: 0o600 });
  const socket = join(dir, 'agent.sock');
  const metricsPort = options.metricsPort ?? 0;
  const args = [AGENT_CLI, ...urls.flatMap((u) => ['--server', u]), '--servername', 'localhost', '--ca', pki.files.caCert, '--cert', clientCert, '--key', clientKey, '--socket', socket, '--keys-refresh-ms', '200', '--timeout-ms', '1500', '--log-level', 'info'];
  if (IS_ROOT) args.push('--socket-group', 'nogroup');
  if (options.metricsPort !== undefined) args.push('--metrics-port', String(metricsPort));
  args.push(...(options.extra ?? []));
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  await until(async () => {
    if (child.exitCode !== null) throw new GiveUp(`the agent exited ${child.exitCode}: ${output}`);
    if (!existsSync(socket)) return false;
    const response = await agentRequest(socket, { id: 1, listKeys: {} });
    return response.result === 'keys' && (response.keys?.keys?.length ?? 0) > 0;
  }, 15_000, `the agent's socket ${socket} to list keys`);
  return {
    socket,
    process: child,
    log: () => output,
    metricsPort,
    stop: async () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      await exited;
      child.stdout!.destroy();
      child.stderr!.destroy();
    },
  };
}

/** What the module, openssl, pkcs11-tool and nginx need in their environment. */
export function moduleEnv(socket: string, dir: string, timeoutMs = 1500): NodeJS.ProcessEnv {
  const conf = join(dir, 'openssl.cnf');
  writeFileSync(
    conf,
    [
      'openssl_conf = openssl_init',
      '[openssl_init]',
      'engines = engine_section',
      '[engine_section]',
      'pkcs11 = pkcs11_section',
      '[pkcs11_section]',
      'engine_id = pkcs11',
      `dynamic_path = ${ENGINE}`,
      `MODULE_PATH = ${MODULE}`,
      'init = 1',
      '',
    ].join('\n'),
  );
  chmodSync(conf, 0o644);
  // KEYLESSD_PKCS11_CONF points at a file that does not exist, so a host's /etc/keylessd/pkcs11.conf cannot interfere.
  return { OPENSSL_CONF: conf, KEYLESSD_PKCS11_SOCKET: socket, KEYLESSD_PKCS11_TIMEOUT_MS: String(timeoutMs), KEYLESSD_PKCS11_KEYS_TTL_MS: '100', KEYLESSD_PKCS11_CONF: join(dir, 'none.conf') };
}

/**
 * A self-signed certificate for `localhost` over each named key of `keyDir` (the test's copies;
 * the edge never reads them), written to `dir` as NAME.crt, and one file trusting them all for
 * the clients: `certs` in the order of `names`.
 */
export function selfSignedCertificates(keyDir: string, dir: string, names: readonly string[]): { certs: string[]; caFile: string } {
  const certs = names.map((name) => {
    const out = join(dir, `${name}.crt`);
    execFileSync('openssl', ['req', '-x509', '-new', '-key', join(keyDir, `${name}.pem`), '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost', '-days', '2', '-out', out], { stdio: 'pipe' });
    chmodSync(out, 0o644);
    return out;
  });
  const caFile = join(dir, 'trusted.pem');
  writeFileSync(caFile, certs.map((cert) => readFileSync(cert, 'utf8')).join(''));
  return { certs, caFile };
}

export interface Nginx extends ServerProcess {
  readonly port: number;
  readonly prefix: string;
}

/**
 * nginx with a temp prefix on 127.0.0.1:`port`; each server block is `listen` + certificates.
 * Workers run as nobody when we are root. Resolves once the port accepts connections.
 */
export async function startNginx(env: NodeJS.ProcessEnv, servers: ReadonlyArray<{ port: number; certs: ReadonlyArray<{ cert: string; key: string }> }>, workers = 2): Promise<Nginx> {
  const prefix = openDir('keylessd-nginx-');
  execFileSync('mkdir', ['-p', join(prefix, 'logs'), join(prefix, 'html'), join(prefix, 'tmp')]);
  writeFileSync(join(prefix, 'html/index.html'), 'served by nginx through keylessd\n');
  chmodSync(join(prefix, 'html'), 0o755);
  chmodSync(join(prefix, 'html/index.html'), 0o644);
  const tmp = join(prefix, 'tmp');
  const conf = [
    IS_ROOT ? 'user nobody nogroup;' : '',
    `worker_processes ${workers};`,
    'daemon off;',
    `pid ${join(prefix, 'nginx.pid')};`,
    `error_log ${join(prefix, 'logs/error.log')} info;`,
    'events { worker_connections 1024; }',
    'http {',
    '  access_log off;',
    `  client_body_temp_path ${tmp}; proxy_temp_path ${tmp}; fastcgi_temp_path ${tmp}; uwsgi_temp_path ${tmp}; scgi_temp_path ${tmp};`,
    ...servers.map((s) =>
      [
        '  server {',
        `    listen 127.0.0.1:${s.port} ssl;`,
        '    ssl_protocols TLSv1.2 TLSv1.3;',
        '    ssl_ciphers ALL;',
        '    ssl_session_cache off; ssl_session_tickets off;',
        ...s.certs.map((c) => `    ssl_certificate ${c.cert};\n    ssl_certificate_key "${c.key}";`),
        `    root ${join(prefix, 'html')};`,
        '  }',
      ].join('\n'),
    ),
    '}',
    '',
  ].join('\n');
  writeFileSync(join(prefix, 'nginx.conf'), conf);
  const server = await startServer('nginx', ['-p', prefix, '-c', join(prefix, 'nginx.conf')], env, join(prefix, 'logs/error.log'), 'SIGQUIT', `nginx on ports ${servers.map((s) => s.port).join(', ')}`, async () =>
    (await Promise.all(servers.map((s) => canConnect({ port: s.port })))).every(Boolean),
  );
  return { port: servers[0]!.port, prefix, ...server };
}

export interface Apache extends ServerProcess {
  readonly port: number;
}

const APACHE_MODULES = '/usr/lib/apache2/modules';

/**
 * Apache httpd 2.4 (event MPM: worker processes with threads, so several handshakes of one
 * process are in C_Sign at once) on 127.0.0.1:`port` with one virtual host serving every
 * certificate; keys are PKCS#11 URIs mod_ssl loads through the engine OPENSSL_CONF names.
 * Children run as nobody when we are root. Resolves once the port accepts connections (the
 * master's backlog holds them until a child takes them; waitForChildrenAs waits for the children).
 */
export async function startApache(env: NodeJS.ProcessEnv, port: number, certs: ReadonlyArray<{ cert: string; key: string }>): Promise<Apache> {
  const root = openDir('keylessd-apache-');
  execFileSync('mkdir', ['-p', join(root, 'logs'), join(root, 'html')]);
  writeFileSync(join(root, 'html/index.html'), 'served by apache through keylessd\n');
  chmodSync(join(root, 'html'), 0o755);
  chmodSync(join(root, 'html/index.html'), 0o644);
  const conf = [
    `ServerRoot ${root}`,
    'ServerName localhost',
    `PidFile ${join(root, 'httpd.pid')}`,
    `DefaultRuntimeDir ${join(root, 'logs')}`,
    `ErrorLog ${join(root, 'logs/error.log')}`,
    'LogLevel warn ssl:info',
    ...(IS_ROOT ? ['User nobody', 'Group nogroup'] : []),
    `Listen 127.0.0.1:${port}`,
    ...['mpm_event', 'authz_core', 'dir', 'ssl'].map((m) => `LoadModule ${m}_module ${APACHE_MODULES}/mod_${m}.so`),
    `DocumentRoot ${join(root, 'html')}`,
    'DirectoryIndex index.html',
    `<VirtualHost 127.0.0.1:${port}>`,
    '  SSLEngine on',
    '  SSLProtocol -all +TLSv1.2 +TLSv1.3',
    '  SSLCipherSuite ALL',
    ...certs.map((c) => `  SSLCertificateFile ${c.cert}\n  SSLCertificateKeyFile "${c.key}"`),
    '</VirtualHost>',
    '',
  ].join('\n');
  writeFileSync(join(root, 'httpd.conf'), conf);
  const server = await startServer('apache2', ['-f', join(root, 'httpd.conf'), '-DFOREGROUND'], env, join(root, 'logs/error.log'), 'SIGTERM', `apache2 on port ${port}`, () => canConnect({ port }));
  return { port, ...server };
}

/** A TLS server process (nginx, apache2) started in the foreground with the module's environment. */
export interface ServerProcess {
  readonly process: ChildProcess;
  errorLog(): string;
  stop(): Promise<void>;
}

/** Starts `cmd` and resolves once `ready()` holds; fails at once with its output and error log if it exits first. */
async function startServer(cmd: string, args: readonly string[], env: NodeJS.ProcessEnv, errorLogFile: string, stopSignal: NodeJS.Signals, what: string, ready: () => Promise<boolean>): Promise<ServerProcess> {
  const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const errorLog = () => {
    try {
      return readFileSync(errorLogFile, 'utf8');
    } catch {
      return '';
    }
  };
  await until(async () => {
    if (child.exitCode !== null) throw new GiveUp(`${cmd} exited ${child.exitCode}: ${output} ${errorLog()}`);
    return ready();
  }, 15_000, what);
  return {
    process: child,
    errorLog,
    stop: async () => {
      if (child.exitCode === null) child.kill(stopSignal);
      await exited;
      // Workers may still hold the pipes for a moment after the master exits.
      child.stdout!.destroy();
      child.stderr!.destroy();
    },
  };
}

/**
 * Waits until every child of the server whose command line contains `match` runs as `user`:
 * the master accepts before it has forked them, and a child is root for a moment after the
 * fork until it switches user. Fails naming what ps showed.
 */
export async function waitForChildrenAs(server: ServerProcess, user: string, match = ''): Promise<void> {
  let children: string[] = [];
  await until(async () => {
    children = (await run('ps', ['-o', 'user=,args=', '--ppid', String(server.process.pid)])).stdout.split('\n').map((l) => l.trim()).filter((l) => l !== '' && l.includes(match));
    return children.length > 0 && children.every((l) => l.startsWith(`${user} `));
  }, 15_000, () => `the children of ${server.process.spawnfile} to run as ${user} (ps says: ${children.join('; ') || 'none'})`);
}

/** The PKCS#11 URI of a key the module presents, by its name in keylessd. */
export const keyUri = (name: string): string => `pkcs11:token=keylessd;object=${name};type=private`;

/** One handshake, and, when it succeeded, the audit records keylessd wrote since it began. */
export async function auditedHandshake(port: number, caFile: string, pki: TestPki, args: readonly string[]): Promise<{ result: Handshake; records: Array<Record<string, any>> }> {
  const before = auditRecords(pki.dir).length;
  const result = await handshake(port, caFile, args);
  if (!result.ok) return { result, records: [] };
  const records = await until(() => {
    const fresh = auditRecords(pki.dir).slice(before);
    return fresh.length > 0 && fresh;
  }, 15_000, 'the audit record of the handshake');
  return { result, records };
}

export interface Handshake {
  ok: boolean;
  protocol?: string;
  cipher?: string;
  peerSignatureType?: string;
  body: string;
  output: string;
  ms: number;
  /** s_client was still waiting after 15 s and was killed: the handshake hung. */
  hung: boolean;
}

/** One full handshake with openssl s_client, verifying the chain against `caFile`, then GET /. */
export async function handshake(port: number, caFile: string, args: readonly string[]): Promise<Handshake> {
  const result = await run('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-servername', 'localhost', '-verify_hostname', 'localhost', '-CAfile', caFile, '-verify_return_error', '-brief', '-ign_eof', ...args], {
    input: 'GET / HTTP/1.0\r\nHost: localhost\r\n\r\n',
    env: { OPENSSL_CONF: '/dev/null' },
    timeoutMs: 15_000,
  });
  const output = result.stdout + result.stderr;
  const body = result.stdout;
  return {
    ok: result.code === 0 && /served by (nginx|apache) through keylessd/.test(body),
    protocol: /Protocol version: (\S+)/.exec(output)?.[1],
    cipher: /Ciphersuite: (\S+)/.exec(output)?.[1],
    peerSignatureType: /^(?:Peer )?[Ss]ignature type: (\S+)/m.exec(output)?.[1],
    body,
    output,
    ms: result.ms,
    hung: result.killed,
  };
}
