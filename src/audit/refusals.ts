/**
 * Bounds what a hostile edge, or an overload, costs the audit log. Refusals (requests answered FORBIDDEN,
 * KEY_NOT_FOUND, BAD_REQUEST, UNSUPPORTED, or OVERLOADED because a backend's queue was full) are recorded in full the first time in each
 * window for one client identity, key and result (keys the client named that do not exist
 * count as one); the rest of that window is counted, and one
 * summary record with the count closes the window. Allowed operations and backend failures
 * are always recorded one by one.
 */
export const SUMMARISED_RESULTS: ReadonlySet<string> = new Set(['FORBIDDEN', 'KEY_NOT_FOUND', 'BAD_REQUEST', 'UNSUPPORTED', 'OVERLOADED']);

interface Window {
  readonly started: number;
  suppressed: number;
  /** The audit fields naming the client: `"client":{…},"listener":…`. */
  readonly who: string;
  readonly result: string;
}

export class RefusalSummaries {
  private windows = new Map<string, Window>();
  private readonly timer: NodeJS.Timeout;

  constructor(
    /** Appends a summary record (a JSON object text). */
    private readonly write: (json: string) => void,
    /** Called with the count whenever a window closes with suppressed refusals (for the logs). */
    private readonly onSummary: (who: string, result: string, count: number) => void,
    private readonly windowMs = 1000,
  ) {
    this.timer = setInterval(() => this.closeWindows(Date.now()), windowMs).unref();
  }

  /** true: record this refusal in full; false: it was counted into its window's summary. */
  admit(identity: string, result: string, who: () => string, now = Date.now()): boolean {
    const key = `${identity}|${result}`;
    const open = this.windows.get(key);
    if (open && now - open.started < this.windowMs) {
      open.suppressed += 1;
      return false;
    }
    if (open) this.close(open, open.started + this.windowMs);
    this.windows.set(key, { started: now, suppressed: 0, who: who(), result });
    return true;
  }

  /** Writes the summaries of every open window (at shutdown). */
  flush(): void {
    clearInterval(this.timer);
    this.closeWindows(Number.POSITIVE_INFINITY);
  }

  private closeWindows(now: number): void {
    for (const [key, window] of this.windows) {
      if (now - window.started < this.windowMs) continue;
      this.close(window, Math.min(now, window.started + this.windowMs));
      this.windows.delete(key);
    }
  }

  private close(window: Window, end: number): void {
    if (window.suppressed === 0) return;
    this.write(
      `{"type":"refusals","time":"${new Date(end).toISOString()}",${window.who},"result":"${window.result}","count":${window.suppressed},"from":"${new Date(window.started).toISOString()}","to":"${new Date(end).toISOString()}"}`,
    );
    this.onSummary(window.who, window.result, window.suppressed);
  }
}
