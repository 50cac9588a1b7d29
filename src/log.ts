import pino from 'pino';

export type Logger = pino.Logger;
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/**
 * Field names that may hold a secret anywhere in a log object. pino replaces their
 * values before serialising, so a careless `logger.info({ config })` cannot leak a PIN.
 */
const REDACT_PATHS = [
  'pin',
  'pin_value',
  'pinValue',
  'passphrase',
  'password',
  'privateKey',
  '*.pin',
  '*.pin_value',
  '*.pinValue',
  '*.passphrase',
  '*.password',
  '*.privateKey',
];

/** JSON lines on stdout (or `destination`), secrets redacted. */
export function createLogger(level: LogLevel = 'info', destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: 'keylessd' },
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    destination ?? pino.destination({ fd: 1, sync: false }),
  );
}
