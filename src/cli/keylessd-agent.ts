#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { parseArgs } from 'node:util';
import { KeylessPool } from '../client/pool';
import { EdgeAgent } from '../edge/agent';
import { createLogger, LOG_LEVELS, type LogLevel } from '../log';
import { packageVersion } from '../util/package-root';

const USAGE = `Usage: keylessd-agent --server URL [--server URL…] --ca FILE --cert FILE --key FILE [options]

The edge agent: serves libkeylessd-pkcs11.so (nginx, Apache, any OpenSSL-based terminator)
over a Unix socket and forwards its signing and decryption to keylessd (docs/edge.md).

Options:
  --server URL           wss://host:port/v1 of a keylessd server; repeat for replicas (failover)
  --servername NAME      the name keylessd's certificate carries, if not the URL's host
  --ca FILE              CA that signed keylessd's server certificate
  --cert FILE --key FILE this agent's client certificate and key (its identity in the audit log)
  --socket PATH          Unix socket for the module (default /run/keylessd-agent/agent.sock)
  --socket-mode OCTAL    socket file mode (default 660)
  --socket-group GROUP   socket file group (name or gid), e.g. www-data
  --metrics-host HOST    health and metrics HTTP listener (default 127.0.0.1)
  --metrics-port N       /healthz and /metrics there (default: off)
  --keys-refresh-ms N    key list fetched from keylessd at most this often (default 2000)
  --timeout-ms N         per-request timeout towards keylessd (default 2000)
  --sessions N           sessions per keylessd server (default 2)
  --log-level LEVEL      ${LOG_LEVELS.join(', ')} (default info)
  -h, --help             this text
  -v, --version          print the version

Signals: SIGTERM/SIGINT close the socket and exit 0.`;

function fail(message: string): never {
  process.stderr.write(`keylessd-agent: ${message}\n`);
  process.exit(1);
}

function number(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) fail(`--${name} must be a non-negative integer, got ${value}`);
  return n;
}

function read(file: string, what: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    fail(`cannot read ${what} ${file}: ${(err as Error).message}`);
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      server: { type: 'string', multiple: true },
      servername: { type: 'string' },
      ca: { type: 'string' },
      cert: { type: 'string' },
      key: { type: 'string' },
      socket: { type: 'string', default: '/run/keylessd-agent/agent.sock' },
      'socket-mode': { type: 'string', default: '660' },
      'socket-group': { type: 'string' },
      'metrics-host': { type: 'string', default: '127.0.0.1' },
      'metrics-port': { type: 'string' },
      'keys-refresh-ms': { type: 'string' },
      'timeout-ms': { type: 'string' },
      sessions: { type: 'string' },
      'log-level': { type: 'string', default: 'info' },
      help: { type: 'boolean', short: 'h' },
      version: { type: 'boolean', short: 'v' },
    },
    strict: true,
  });
  if (values.help) return void process.stdout.write(`${USAGE}\n`);
  if (values.version) return void process.stdout.write(`${packageVersion()}\n`);
  if (!values.server?.length) fail(`--server is required\n${USAGE}`);
  if (!values.ca || !values.cert || !values.key) fail(`--ca, --cert and --key are required\n${USAGE}`);
  if (!(LOG_LEVELS as readonly string[]).includes(values['log-level'])) fail(`--log-level must be one of ${LOG_LEVELS.join(', ')}`);
  if (!/^[0-7]{3,4}$/.test(values['socket-mode'])) fail(`--socket-mode must be octal, like 660`);
  const logger = createLogger(values['log-level'] as LogLevel).child({ service: 'keylessd-agent' });

  const pool = new KeylessPool({
    servers: values.server.map((url) => ({ url, servername: values.servername })),
    ca: read(values.ca, 'the CA certificate'),
    cert: read(values.cert, 'the client certificate'),
    key: read(values.key, 'the client key'),
    sessionsPerServer: number('sessions', values.sessions, 2),
    requestTimeoutMs: number('timeout-ms', values['timeout-ms'], 2000),
    initialBackoffMs: 50,
    maxBackoffMs: 2000,
    setAsideMs: 2000,
    healthPingMs: 5000,
  });
  const agent = await EdgeAgent.start({
    pool,
    socketPath: values.socket,
    socketMode: parseInt(values['socket-mode'], 8),
    socketGroup: values['socket-group'],
    keysRefreshMs: number('keys-refresh-ms', values['keys-refresh-ms'], 2000),
    logger,
  });
  let http: Server | undefined;
  if (values['metrics-port'] !== undefined) {
    http = createServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0];
      if (path === '/healthz') {
        const health = agent.health();
        res.writeHead(health.ok ? 200 : 503, { 'content-type': 'application/json' }).end(`${JSON.stringify(health)}\n`);
      } else if (path === '/metrics') {
        agent.metrics.registry.metrics().then(
          (text) => res.writeHead(200, { 'content-type': agent.metrics.registry.contentType }).end(text),
          () => res.writeHead(500).end(),
        );
      } else res.writeHead(404).end();
    });
    await new Promise<void>((resolve, reject) => {
      http!.once('error', reject);
      http!.listen(number('metrics-port', values['metrics-port'], 0), values['metrics-host'], () => resolve());
    });
    logger.info({ metrics: `http://${values['metrics-host']}:${(http.address() as AddressInfo).port}` }, 'health and metrics');
  }
  pool.ready(10_000).then(
    () => logger.info({ servers: pool.status() }, 'connected to keylessd'),
    (err: Error) => logger.warn({ cause: err.message }, 'no keylessd server reachable yet; retrying in the background'),
  );
  const stop = (signal: string) => {
    logger.info({ signal }, 'stopping');
    http?.close();
    void Promise.all([agent.close(), pool.close()]).then(() => process.exit(0));
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

main().catch((err: unknown) => {
  if ((err as NodeJS.ErrnoException).code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') fail(`${(err as Error).message}\n${USAGE}`);
  fail((err as Error).message);
});
