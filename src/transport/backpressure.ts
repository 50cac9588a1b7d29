import type { Metrics } from '../metrics/metrics';

/** The connection's event source: `drain` once its queued bytes have gone, `close` at its end. */
interface Connection {
  once(event: 'drain' | 'close', listener: () => void): unknown;
}

/** Where a protocol reads its requests from (a socket, a WebSocket). */
interface RequestReader {
  pause(): void;
  resume(): void;
}

/**
 * A client that sends requests but does not read the answers would make them pile up in
 * memory without bound. After each answer is written, `written()` checks what is queued:
 * past `limit` bytes the client's requests stop being read until the connection drains.
 * One per connection, for every protocol; keyless_sessions_paused counts the connections
 * held this way and keyless_send_buffer_bytes what they queue.
 */
export class SendBackpressure {
  private paused = false;
  private readonly gauge: { inc(): void; dec(): void };

  constructor(
    private readonly connection: Connection,
    private readonly reader: RequestReader,
    /** Bytes queued for the client and not yet sent. */
    private readonly queued: () => number,
    private readonly limit: number,
    /** Whether reading may go on once the client catches up (false while shutting down). */
    private readonly mayResume: () => boolean,
    metrics: Metrics,
    listener: string,
  ) {
    this.gauge = metrics.sessionsPaused.labels({ listener });
    const unwatch = metrics.watchSendQueue(listener, queued);
    connection.once('close', () => {
      unwatch();
      this.release();
    });
  }

  /** After an answer was written: stop reading when too much waits to be sent. */
  written(): void {
    if (this.paused || this.queued() <= this.limit) return;
    this.paused = true;
    this.gauge.inc();
    this.reader.pause();
    this.connection.once('drain', () => {
      if (this.release() && this.mayResume()) this.reader.resume();
    });
  }

  /** Ends a pause; false when there was none (already released, or the connection closed). */
  private release(): boolean {
    if (!this.paused) return false;
    this.paused = false;
    this.gauge.dec();
    return true;
  }
}
