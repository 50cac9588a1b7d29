import pino from 'pino';

export type Logger = pino.Logger;
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** Field names that may hold a secret, at any depth up to REDACT_DEPTH: their whole value is replaced. */
const SECRET_FIELDS = ['pin', 'pin_value', 'pinValue', '["pin-value"]', 'passphrase', 'password', 'privateKey', 'private_key'];
/** Fields holding a URI: only an embedded `pin-value=` attribute (RFC 7512) is replaced, the rest stays readable. */
const URI_FIELDS = ['uri', 'url'];
/** Objects logged nest at most this deep (a config: backends[i].uri is depth 2). */
const REDACT_DEPTH = 5;

function atEveryDepth(fields: readonly string[]): string[] {
  const paths: string[] = [];
  for (let depth = 0; depth <= REDACT_DEPTH; depth++) {
    for (const field of fields) paths.push(`${'*.'.repeat(depth)}${field}`.replace(/\.\[/g, '['));
  }
  return paths;
}

const REDACT_PATHS = [...atEveryDepth(SECRET_FIELDS), ...atEveryDepth(URI_FIELDS)];

/** pino's censor: a URI keeps all but its PIN; any other secret field is replaced whole. */
function censor(value: unknown, path: string[]): unknown {
  if (typeof value === 'string' && URI_FIELDS.includes(path[path.length - 1]!)) return value.replace(/(pin-value=)[^&;?]*/gi, '$1[redacted]');
  if (URI_FIELDS.includes(path[path.length - 1]!)) return value;
  return '[redacted]';
}

/** JSON lines on stdout (or `destination`), secrets redacted. */
export function createLogger(level: LogLevel = 'info', destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: 'keylessd' },
      redact: { paths: REDACT_PATHS, censor },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    destination ?? pino.destination({ fd: 1, sync: false }),
  );
}
