import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { LineCounter, parseDocument } from 'yaml';
import { ConfigError } from '../errors';
import { formatConfigIssues } from './format';
import { convertGokeylessConfig, looksLikeGokeylessConfig, type ConversionNote } from './gokeyless';
import { configSchema, type Config } from './schema';

/** Where the audit log goes when a config file does not say. */
export const DEFAULT_AUDIT_PATH = '/var/lib/keylessd/audit.log';

/** A setting given outside the file (environment or command line), applied before validation. */
export interface Override {
  readonly path: readonly string[];
  readonly value: string;
  /** Where it came from, for error messages: `KEYLESSD_LISTEN_PORT`, `--port`. */
  readonly source: string;
}

/** Environment variables that override the file, and the config field each sets. */
export const ENV_OVERRIDES: Readonly<Record<string, readonly string[]>> = {
  KEYLESSD_LISTEN_HOST: ['listen', 'host'],
  KEYLESSD_LISTEN_PORT: ['listen', 'port'],
  KEYLESSD_METRICS_HOST: ['metrics', 'host'],
  KEYLESSD_METRICS_PORT: ['metrics', 'port'],
  KEYLESSD_LOG_LEVEL: ['log', 'level'],
  KEYLESSD_TLS_CERT: ['tls', 'cert'],
  KEYLESSD_TLS_KEY: ['tls', 'key'],
  KEYLESSD_TLS_CLIENT_CA: ['tls', 'client_ca'],
};

export function envOverrides(env: NodeJS.ProcessEnv): Override[] {
  return Object.entries(ENV_OVERRIDES).flatMap(([name, path]) => (env[name] === undefined ? [] : [{ path, value: env[name]!, source: name }]));
}

/** How an override is named in a message: `$KEYLESSD_LISTEN_PORT` or `--port`. */
function sourceName(source: string): string {
  return source.startsWith('-') ? source : `$${source}`;
}

/**
 * The same error, saying which environment variable or flag set the field, when one did:
 * `listen.port (set by $KEYLESSD_LISTEN_PORT): expected a number …`.
 */
export function blameOverride(err: ConfigError, overrides: readonly Override[]): ConfigError {
  const override = [...overrides].reverse().find((o) => o.path.join('.') === err.field);
  return override ? new ConfigError(`${err.field} (set by ${sourceName(override.source)})`, err.problem) : err;
}

/** "2408" becomes 2408 and "true" becomes true, so the schema checks the value, not its spelling. */
function typed(value: string): unknown {
  if (/^-?\d+$/.test(value)) return Number(value);
  if (value === 'true' || value === 'false') return value === 'true';
  return value;
}

function applyOverrides(raw: Record<string, unknown>, overrides: readonly Override[]): void {
  for (const { path, value } of overrides) {
    let node = raw;
    for (const part of path.slice(0, -1)) {
      if (typeof node[part] !== 'object' || node[part] === null) node[part] = {};
      node = node[part] as Record<string, unknown>;
    }
    node[path[path.length - 1]!] = typed(value);
  }
}

/** Parses YAML text into a plain object, or throws a ConfigError with the line of the first syntax error. */
export function parseYaml(text: string, file: string): Record<string, unknown> {
  const lineCounter = new LineCounter();
  // logLevel error: odd input (a mapping used as a key) is refused by the schema, not warned about on stderr.
  const doc = parseDocument(text, { prettyErrors: false, lineCounter, logLevel: 'error' });
  if (doc.errors.length > 0) {
    const first = doc.errors[0]!;
    const line = lineCounter.linePos(first.pos[0]).line;
    throw new ConfigError(line ? `${file}:${line}` : file, `not valid YAML: ${first.message.split('\n')[0]}`);
  }
  let value: unknown;
  try {
    value = doc.toJS();
  } catch (err) {
    // e.g. an alias to an anchor that does not exist
    throw new ConfigError(file, `not valid YAML: ${(err as Error).message}`, { cause: err });
  }
  if (value === null || value === undefined) return {};
  if (typeof value !== 'object' || Array.isArray(value)) throw new ConfigError(file, 'expected a mapping of settings at the top level');
  return value as Record<string, unknown>;
}

/** Validates a raw settings object. Throws one ConfigError listing every problem. */
export function validateConfig(raw: Record<string, unknown>, overrides: readonly Override[] = [], baseDir = process.cwd()): Config {
  const copy = structuredClone(raw);
  applyOverrides(copy, overrides);
  const result = configSchema.safeParse(copy, { reportInput: true });
  if (!result.success) {
    const lines = formatConfigIssues(result.error, '', copy).map((line) => {
      const field = line.slice(0, line.indexOf(':'));
      return blameOverride(new ConfigError(field, line.slice(field.length + 2)), overrides).message;
    });
    if (lines.length === 1) {
      const field = lines[0]!.slice(0, lines[0]!.indexOf(': '));
      throw new ConfigError(field, lines[0]!.slice(field.length + 2));
    }
    throw new ConfigError(lines[0]!.split(':')[0]!, `\n  ${lines.join('\n  ')}`);
  }
  return resolvePaths(result.data, baseDir);
}

/**
 * Reads a keylessd.yaml, or a gokeyless.yaml (converted; `onNote` hears which of its keys
 * were ignored and why).
 */
export function loadConfigFile(file: string, overrides: readonly Override[] = [], onNote: (note: ConversionNote) => void = () => {}): Config {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(file, `cannot read the config file: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
  }
  let raw = parseYaml(text, file);
  if (looksLikeGokeylessConfig(raw)) {
    const converted = convertGokeylessConfig(raw, dirname(resolve(file)));
    converted.notes.forEach(onNote);
    raw = converted.config;
  }
  return validateConfig(raw, overrides, dirname(resolve(file)));
}

/** Relative file names in the config are relative to the config file's folder, not the working directory. */
function resolvePaths(config: Config, baseDir: string): Config {
  const at = (path: string) => (isAbsolute(path) ? path : resolve(baseDir, path));
  const maybe = (path: string | undefined) => (path === undefined ? undefined : at(path));
  return {
    ...config,
    tls: { ...config.tls, cert: at(config.tls.cert), key: at(config.tls.key), client_ca: at(config.tls.client_ca), crl: maybe(config.tls.crl) },
    pid_file: maybe(config.pid_file),
    audit: { ...config.audit, path: at(config.audit.path ?? DEFAULT_AUDIT_PATH), signing_key: maybe(config.audit.signing_key) },
    backends: config.backends.map((backend) => {
      switch (backend.type) {
        case 'file':
          return {
            ...backend,
            dir: maybe(backend.dir),
            passphrase_file: maybe(backend.passphrase_file),
            files: backend.files.map((f) => ({ ...f, path: at(f.path), passphrase_file: maybe(f.passphrase_file) })),
          };
        case 'pkcs11':
          return backend; // RFC 7512 requires absolute paths in the URI itself
        case 'cng':
          return { ...backend, shim_path: maybe(backend.shim_path) };
      }
    }),
  };
}
