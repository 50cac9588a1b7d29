import type { Logger } from '../log';

export interface LogLimiterOptions {
  /** Lines written per kind of event in each interval; the rest are counted. */
  readonly lines: number;
  readonly intervalMs: number;
}

export const DEFAULT_LOG_LIMIT: LogLimiterOptions = { lines: 10, intervalMs: 10_000 };

type Level = 'debug' | 'info' | 'warn' | 'error';

/**
 * Rate limit for log events a stranger can cause at will (failed handshakes, refused
 * connections, protocol errors): per kind, the first `lines` events of each interval are
 * written, the rest only counted, and at the end of the interval one summary line says how
 * many were suppressed. So junk traffic costs a bounded number of lines per interval,
 * whatever its rate, and the counts are not lost.
 */
export class LogLimiter {
  private readonly kinds = new Map<string, { logged: number; suppressed: number; message: string }>();
  private windowStart = Date.now();
  private timer?: NodeJS.Timeout;

  constructor(
    private readonly logger: Logger,
    private readonly options: LogLimiterOptions = DEFAULT_LOG_LIMIT,
  ) {}

  log(level: Level, kind: string, fields: Record<string, unknown>, message: string): void {
    if (!this.logger.isLevelEnabled(level)) return;
    let state = this.kinds.get(kind);
    if (!state) {
      state = { logged: 0, suppressed: 0, message };
      this.kinds.set(kind, state);
    }
    this.timer ??= setInterval(() => this.flush(), this.options.intervalMs).unref();
    if (state.logged < this.options.lines) {
      state.logged += 1;
      this.logger[level](fields, message);
    } else {
      state.suppressed += 1;
    }
  }

  /** Writes the summary of the interval so far and starts a new one. */
  flush(): void {
    const seconds = Math.max(1, Math.round((Date.now() - this.windowStart) / 1000));
    for (const [kind, state] of this.kinds) {
      if (state.suppressed === 0) continue;
      this.logger.warn({ kind, suppressed: state.suppressed, interval_s: seconds }, `suppressed ${state.suppressed} more log lines like "${state.message}" (${kind}) in the last ${seconds} s`);
    }
    const quiet = this.kinds.size === 0;
    this.kinds.clear();
    this.windowStart = Date.now();
    if (quiet && this.timer) {
      clearInterval(this.timer);
      this.timer = undefined;
    }
  }

  /** Final summary; no timer left behind. */
  stop(): void {
    this.flush();
    clearInterval(this.timer);
    this.timer = undefined;
  }
}
