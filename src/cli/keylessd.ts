#!/usr/bin/env node
import { relative, join } from 'node:path';
import { parseArgs } from 'node:util';
import { blameOverride, loadConfigFile, envOverrides, validateConfig, type Override } from '../config/load';
import { auditProblems, certificateValidityProblems, listenProblems, noKeysProblem } from '../config/preflight';
import type { Config } from '../config/schema';
import { Daemon } from '../daemon';
import { DEFAULT_STATE_DIR, devConfig, ensureDevState, stateDir } from '../daemon/devstate';
import { ConfigError } from '../errors';
import { createLogger } from '../log';
import { closeKeySet, openKeySet } from '../daemon/key-set';
import { loadTlsMaterial } from '../transport/tls';
import { packageVersion } from '../util/package-root';

const USAGE = `Usage: keylessd [options]

Serves private-key operations to TLS edges over keyless.v1 (WebSocket, mutual TLS).
With no --config it serves the embedded default: a development PKI and demo keys in
./${DEFAULT_STATE_DIR} (or --state-dir / $KEYLESSD_STATE_DIR), created on first run.

Options:
  --config FILE          YAML configuration file
  --check-config FILE    validate FILE (settings, TLS files and their validity, every key,
                         the audit folder, free ports) and exit: 0 if it would serve, 1 if not
  --skip-port-check      with --check-config: do not try to bind the ports (checking a new
                         file for a keylessd that is running and will reload it)
  --state-dir DIR        state folder of the embedded default
  --listen-host HOST     overrides listen.host        ($KEYLESSD_LISTEN_HOST)
  --port N               overrides listen.port        ($KEYLESSD_LISTEN_PORT)
  --metrics-host HOST    overrides metrics.host       ($KEYLESSD_METRICS_HOST)
  --metrics-port N       overrides metrics.port       ($KEYLESSD_METRICS_PORT)
  --log-level LEVEL      overrides log.level          ($KEYLESSD_LOG_LEVEL)
  --shutdown-deadline-ms N  how long SIGTERM waits for requests in flight (default 10000)
  -h, --help             this text
  -v, --version          print the version

Signals: SIGHUP reloads keys, certificates and policy without dropping sessions;
SIGTERM/SIGINT drain and exit 0 (a second one exits at once).`;

const FLAG_OVERRIDES: Readonly<Record<string, readonly string[]>> = {
  'listen-host': ['listen', 'host'],
  port: ['listen', 'port'],
  'metrics-host': ['metrics', 'host'],
  'metrics-port': ['metrics', 'port'],
  'log-level': ['log', 'level'],
};

function fail(message: string): never {
  process.stderr.write(`keylessd: ${message}\n`);
  process.exit(1);
}

/**
 * Opens every backend, reads the TLS files, probes the audit folder and the ports, so a
 * config that passes will start and serve. Every problem found is printed, one line each.
 */
async function checkConfig(file: string, overrides: Override[], portCheck: boolean): Promise<void> {
  const config = loadConfigFile(file, overrides, (note) => process.stdout.write(`${file} (gokeyless.yaml): ${note.key}: ${note.why}\n`));
  const problems: ConfigError[] = [];
  const collect = (err: unknown) => {
    if (err instanceof ConfigError) problems.push(blameOverride(err, overrides));
    else throw err;
  };
  try {
    loadTlsMaterial(config.tls);
  } catch (err) {
    collect(err);
  }
  [...certificateValidityProblems(config.tls), ...auditProblems(config.audit)].forEach(collect);
  if (portCheck) (await listenProblems(config)).forEach(collect);
  let summary = '';
  const warnings: string[] = [];
  try {
    const keys = await openKeySet(config, warningCollector(warnings));
    await closeKeySet(keys);
    const none = noKeysProblem(keys.registry.size, keys.skipped);
    if (none) collect(none);
    const skipped = keys.skipped.map((s) => `  skipped ${s.source}: ${s.reason}\n`).join('');
    const warned = warnings.map((w) => `  warning: ${w}\n`).join('');
    summary = `${file}: OK, ${keys.registry.size} keys from ${config.backends.length} backend(s)\n${skipped}${warned}`;
  } catch (err) {
    collect(err);
  }
  if (problems.length > 0) {
    process.stderr.write(problems.map((p) => `keylessd: ${p.message}\n`).join(''));
    process.exit(1);
  }
  process.stdout.write(summary);
}

/** A logger that keeps the messages of warnings (those about skipped keys are listed apart). */
function warningCollector(into: string[]) {
  const sink = {
    write(line: string) {
      const entry = JSON.parse(line) as { level: string; msg: string };
      if (entry.level === 'warn' && !/^(skipping key file|not serving) /.test(entry.msg)) into.push(entry.msg);
    },
  };
  return createLogger('warn', sink);
}

/** Startup refuses a server certificate outside its validity period (and so does a reload). */
function refuseInvalidCertificates(config: Config): Config {
  const [first] = certificateValidityProblems(config.tls);
  if (first) throw first;
  return config;
}

/** Set once parsed, so a ConfigError about an overridden field can name the variable or flag. */
let activeOverrides: Override[] = [];

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      config: { type: 'string' },
      'check-config': { type: 'string' },
      'skip-port-check': { type: 'boolean' },
      'state-dir': { type: 'string' },
      'listen-host': { type: 'string' },
      port: { type: 'string' },
      'metrics-host': { type: 'string' },
      'metrics-port': { type: 'string' },
      'log-level': { type: 'string' },
      'shutdown-deadline-ms': { type: 'string', default: '10000' },
      help: { type: 'boolean', short: 'h' },
      version: { type: 'boolean', short: 'v' },
    },
    strict: true,
  });
  if (values.help) return void process.stdout.write(`${USAGE}\n`);
  if (values.version) return void process.stdout.write(`${packageVersion()}\n`);
  const overrides: Override[] = [
    ...envOverrides(process.env),
    ...Object.entries(FLAG_OVERRIDES).flatMap(([flag, path]) => {
      const value = values[flag as keyof typeof values];
      return typeof value === 'string' ? [{ path, value, source: `--${flag}` }] : [];
    }),
  ];
  activeOverrides = overrides;
  if (values['check-config']) return checkConfig(values['check-config'], overrides, !values['skip-port-check']);

  let load: () => Config;
  let embedded: string | undefined;
  if (values.config) {
    const file = values.config;
    load = () => refuseInvalidCertificates(loadConfigFile(file, overrides, (note) => process.stderr.write(`keylessd: ${file} looks like a gokeyless.yaml: ${note.key}: ${note.why}\n`)));
  } else {
    const dir = stateDir(process.env, values['state-dir']);
    embedded = dir;
    const created = await ensureDevState(dir);
    if (created) process.stderr.write(`keylessd: created a development PKI and demo keys in ${dir}\n`);
    load = () => refuseInvalidCertificates(validateConfig(devConfig(dir), overrides));
  }
  const config = load();
  const logger = createLogger(config.log.level);
  // Handlers go in before the listeners open: a signal in between must not kill the process.
  let daemon: Daemon | undefined;
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) {
      logger.warn({ signal }, 'second signal: exiting at once');
      process.exit(1);
    }
    stopping = true;
    logger.info({ signal }, 'draining: no new sessions, finishing requests in flight');
    if (!daemon) process.exit(0);
    daemon.shutdown(Number(values['shutdown-deadline-ms'])).then(
      () => process.exit(0),
      (err) => {
        logger.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGHUP', () => {
    if (stopping || !daemon) return logger.warn('SIGHUP ignored: not serving yet or shutting down');
    logger.info('SIGHUP: reloading configuration');
    void daemon.reload(load);
  });
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  const started = await Daemon.start(config, logger);
  daemon = started.daemon;
  if (embedded) printEmbeddedHint(embedded, started.addresses.v1.port);
}

function printEmbeddedHint(dir: string, port: number): void {
  const shortest = (path: string) => {
    const rel = relative(process.cwd(), path);
    return rel === '' ? '.' : rel.startsWith('..') ? path : rel;
  };
  const ctl = shortest(join(__dirname, 'keylessctl.js'));
  const stateFlag = dir === stateDir({}) ? '' : ` --state-dir ${shortest(dir)}`;
  const portFlag = port === 2408 ? '' : ` --server 127.0.0.1:${port}`;
  process.stderr.write(
    `\nkeylessd is serving the embedded default (development PKI and demo keys in ${dir}).\n` +
      `Sign with a demo key from another terminal:\n\n` +
      `  node ${ctl} sign --key demo-p256 --algorithm ECDSA_SHA256 --message package.json${stateFlag}${portFlag}\n\n`,
  );
}

main().catch((err: unknown) => {
  if (err instanceof ConfigError) fail(blameOverride(err, activeOverrides).message);
  if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE') fail(`cannot listen: ${(err as Error).message} (another keylessd running?)`);
  if ((err as NodeJS.ErrnoException).code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') fail(`${(err as Error).message}\n${USAGE}`);
  fail((err as Error).message);
});
