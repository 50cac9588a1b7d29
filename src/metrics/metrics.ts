import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { TallyCounter, TallyHistogram } from './tally';

const DURATION_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5];

/**
 * Every metric keylessd exports, on a registry of its own. Labels take values from
 * configuration and the protocol only (listener, backend, key name, operation,
 * algorithm, error code), never per client or per request, so cardinality stays bounded.
 */
/**
 * One naming scheme for the `algorithm` label: the keyless.v1 enum names, for signatures
 * (`ECDSA_SHA256`) and decryption paddings alike (`RSA_RAW`, `RSA_OAEP_SHA256`, never
 * `rsa-oaep-sha256`). Computed once per label set (Tally.add), not per request.
 */
export function algorithmLabel(algorithm: string): string {
  return algorithm.toUpperCase().replace(/-/g, '_');
}

export class Metrics {
  readonly registry = new Registry();

  // The three metrics observed on every request are tallies (src/metrics/tally.ts): same
  // exposition, a fraction of prom-client's cost per observation.
  readonly requests = new TallyCounter('keyless_requests_total', 'Requests answered, by listener, operation, algorithm, backend and result (ok or the error code).', [this.registry]);
  readonly requestDuration = new TallyHistogram('keyless_request_duration_seconds', 'Time from a request being decoded to its answer being sent.', DURATION_BUCKETS, [this.registry]);
  readonly backendDuration = new TallyHistogram('keyless_backend_operation_duration_seconds', 'Time a backend took for one private-key operation.', DURATION_BUCKETS, [this.registry]);
  readonly sessionsActive = new Gauge({
    name: 'keyless_sessions_active',
    help: 'Sessions (connections) currently open, by listener.',
    labelNames: ['listener'] as const,
    registers: [this.registry],
  });
  readonly sessionsOpened = new Counter({
    name: 'keyless_sessions_opened_total',
    help: 'Sessions opened since start, by listener.',
    labelNames: ['listener'] as const,
    registers: [this.registry],
  });
  readonly connectionsRefused = new Counter({
    name: 'keyless_connections_refused_total',
    help: 'Connections refused before a session began, by listener and reason (max_sessions, max_pending_handshakes, max_pending_handshakes_per_address, bad_upgrade, shutting_down).',
    labelNames: ['listener', 'reason'] as const,
    registers: [this.registry],
  });
  readonly sessionsPaused = new Gauge({
    name: 'keyless_sessions_paused',
    help: 'Sessions whose requests are not being read because their client does not read the answers (more than limits.max_send_buffer_bytes queued), by listener.',
    labelNames: ['listener'] as const,
    registers: [this.registry],
  });
  private readonly sendQueues = new Map<() => number, string>();
  readonly sendBuffered = new Gauge({
    name: 'keyless_send_buffer_bytes',
    help: 'Bytes of answers queued for clients and not yet sent, by listener.',
    labelNames: ['listener'] as const,
    registers: [this.registry],
    // Read at scrape time from each open session.
    collect: () => {
      const totals = new Map<string, number>();
      for (const [bytes, listener] of this.sendQueues) totals.set(listener, (totals.get(listener) ?? 0) + bytes());
      this.sendBuffered.reset();
      for (const [listener, total] of totals) this.sendBuffered.set({ listener }, total);
    },
  });
  readonly handshakesPending = new Gauge({
    name: 'keyless_tls_handshakes_pending',
    help: 'Connections accepted whose TLS handshake has not finished yet, by listener.',
    labelNames: ['listener'] as const,
    registers: [this.registry],
  });
  readonly handshakeFailures = new Counter({
    name: 'keyless_tls_handshake_failures_total',
    help: 'TLS handshakes that failed, by listener and reason (no_certificate, unknown_ca, expired, timeout, other).',
    labelNames: ['listener', 'reason'] as const,
    registers: [this.registry],
  });
  /** Requests in flight per listener: plain numbers on the request path, read into the gauge at scrape time. */
  private readonly inflightCounts = new Map<string, { value: number; inc(): void; dec(): void }>();
  readonly inflight = new Gauge({
    name: 'keyless_inflight_requests',
    help: 'Requests being worked on, by listener.',
    labelNames: ['listener'] as const,
    registers: [this.registry],
    collect: () => {
      for (const [listener, count] of this.inflightCounts) this.inflight.set({ listener }, count.value);
    },
  });
  readonly policyDenials = new Counter({
    name: 'keyless_policy_denials_total',
    help: 'Requests refused by access policy, by key.',
    labelNames: ['key'] as const,
    registers: [this.registry],
  });
  readonly keysLoaded = new Gauge({
    name: 'keyless_keys_loaded',
    help: 'Keys being served, by backend.',
    labelNames: ['backend'] as const,
    registers: [this.registry],
  });
  private backends: () => ReadonlyArray<{ readonly name: string; healthy(): boolean }> = () => [];
  readonly backendUp = new Gauge({
    name: 'keyless_backend_up',
    help: '1 while a backend is healthy, 0 while it is down or reconnecting.',
    labelNames: ['backend'] as const,
    registers: [this.registry],
    // Read at scrape time, so the gauge is never staler than the scrape.
    collect: () => {
      this.backendUp.reset();
      for (const backend of this.backends()) this.backendUp.set({ backend: backend.name }, backend.healthy() ? 1 : 0);
    },
  });
  readonly protocolErrors = new Counter({
    name: 'keyless_protocol_errors_total',
    help: 'Frames that could not be served as requests, and TLS renegotiation attempts, by listener and kind (text_frame, undecodable, too_big, format, renegotiation).',
    labelNames: ['listener', 'kind'] as const,
    registers: [this.registry],
  });
  readonly auditRecords = new Counter({
    name: 'keyless_audit_records_total',
    help: 'Records appended to the audit log.',
    registers: [this.registry],
  });
  readonly auditWriteFailures = new Counter({
    name: 'keyless_audit_write_failures_total',
    help: 'Failed writes to the audit log.',
    registers: [this.registry],
  });
  readonly auditEvents = new Counter({
    name: 'keyless_audit_events_total',
    help: 'Repairs and milestones of the audit log, by event: set_aside (a damaged tail moved aside at start), resumed (the current file was missing at start), reopened (the file was removed or replaced while running), checkpoint, retention.',
    labelNames: ['event'] as const,
    registers: [this.registry],
  });
  readonly certificateExpiry = new Gauge({
    name: 'keyless_certificate_expiry_timestamp_seconds',
    help: 'When a configured certificate expires (Unix time), by listener and role (server, client_ca).',
    labelNames: ['listener', 'role'] as const,
    registers: [this.registry],
  });
  readonly reloadSuccess = new Gauge({
    name: 'keyless_config_last_reload_successful',
    help: '1 if the last configuration reload succeeded, 0 if it failed and the previous configuration is still serving.',
    registers: [this.registry],
  });
  readonly reloadFailures = new Counter({
    name: 'keyless_config_reload_failures_total',
    help: 'Reloads that failed; the previous configuration kept serving.',
    registers: [this.registry],
  });
  readonly reloadTime = new Gauge({
    name: 'keyless_config_last_reload_timestamp_seconds',
    help: 'When the configuration was last loaded or successfully reloaded (Unix time).',
    registers: [this.registry],
  });

  inflightFor(listener: string): { inc(): void; dec(): void } {
    let count = this.inflightCounts.get(listener);
    if (!count) {
      count = {
        value: 0,
        inc() {
          this.value += 1;
        },
        dec() {
          this.value -= 1;
        },
      };
      this.inflightCounts.set(listener, count);
    }
    return count;
  }

  /** One answered request: counted by outcome, timed by operation. */
  recordRequest(listener: string, operation: string, algorithm: string, backend: string, result: string, seconds: number): void {
    const request = `${listener}|${operation}|${algorithm}|${backend}|${result}`;
    (this.requests.find(request) ?? this.requests.add(request, { listener, operation, algorithm: algorithmLabel(algorithm), backend, result })).inc();
    const duration = `${listener}|${operation}`;
    (this.requestDuration.find(duration) ?? this.requestDuration.add(duration, { listener, operation })).observe(seconds);
  }

  recordBackendCall(backend: string, operation: string, seconds: number): void {
    const key = `${backend}|${operation}`;
    (this.backendDuration.find(key) ?? this.backendDuration.add(key, { backend, operation })).observe(seconds);
  }

  /** Counts `bytes()` of one session in keyless_send_buffer_bytes until the returned function is called. */
  watchSendQueue(listener: string, bytes: () => number): () => void {
    this.sendQueues.set(bytes, listener);
    return () => this.sendQueues.delete(bytes);
  }

  /** Where keyless_backend_up reads the current backends from (they change on reload). */
  watchBackends(backends: () => ReadonlyArray<{ readonly name: string; healthy(): boolean }>): void {
    this.backends = backends;
  }

  constructor() {
    collectDefaultMetrics({ register: this.registry, eventLoopMonitoringPrecision: 20 });
  }
}
