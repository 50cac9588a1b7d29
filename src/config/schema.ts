import { z } from 'zod';
import { fileBackendSchema } from '../../backends/file/schema';
import { pkcs11BackendSchema } from '../../backends/pkcs11/schema';
import { cngBackendSchema } from '../../backends/cng/schema';
import { auditSchema } from '../audit/schema';
import { LOG_LEVELS } from '../log';
import { defaultPolicySchema, groupSchema, keyPolicySchema } from '../core/policy/schema';

const port = (what: string, fallback: number) =>
  z
    .number({ error: 'expected a number between 1 and 65535' })
    .int({ error: 'expected a whole number between 1 and 65535' })
    .min(1, { error: 'expected a number between 1 and 65535' })
    .max(65535, { error: 'expected a number between 1 and 65535' })
    .default(fallback)
    .describe(what);

const positive = (what: string, fallback: number, max = 2 ** 31 - 1) =>
  z
    .number({ error: `expected a whole number between 1 and ${max}` })
    .int({ error: `expected a whole number between 1 and ${max}` })
    .min(1, { error: `expected a whole number between 1 and ${max}` })
    .max(max, { error: `expected a whole number between 1 and ${max}` })
    .default(fallback)
    .describe(what);

const tlsVersion = z.enum(['TLSv1.2', 'TLSv1.3']);

export const listenSchema = z
  .object({
    host: z.string().min(1).default('127.0.0.1').describe('Address the keyless.v1 listener binds to.'),
    port: port('Port of the keyless.v1 listener (WebSocket over mutual TLS).', 2408),
    path: z.string().startsWith('/').default('/v1').describe('HTTP path of the WebSocket upgrade.'),
  })
  .strict();

export const tlsSchema = z
  .object({
    cert: z.string().min(1).describe('Server certificate chain, PEM.'),
    key: z.string().min(1).describe('Server private key, PEM.'),
    client_ca: z.string().min(1).describe('CA bundle (PEM) client certificates must chain to. Clients without such a certificate cannot finish the handshake.'),
    crl: z.string().min(1).optional().describe('Certificate revocation list (PEM) checked during the handshake.'),
    min_version: tlsVersion.default('TLSv1.3').describe('Lowest TLS version the keyless.v1 listener accepts. TLSv1.2 allows only ECDHE with AES-GCM or ChaCha20-Poly1305.'),
    handshake_timeout_ms: positive('A client that has not finished the TLS handshake by then is disconnected.', 5_000, 120_000),
  })
  .strict();

export const limitsSchema = z
  .object({
    max_inflight_per_session: positive('Requests one session may have in flight; more are answered OVERLOADED at once.', 4096, 1_000_000),
    max_inflight_total: positive('Requests in flight across all sessions; more are answered OVERLOADED at once.', 65_536, 10_000_000),
    max_queued_per_backend: positive(
      "Work that may wait for a turn on one backend, counted in its calls (on the file backend an RSA operation counts 1 and an ECDSA or Ed25519 signature 1/20); more is answered OVERLOADED at once instead of queueing, so an overloaded server keeps answering at its capacity with a bounded wait. A session with less than its share of the queue is still admitted.",
      256,
      1_000_000,
    ),
    max_frame_bytes: positive('Largest WebSocket message accepted; a larger one closes the session with code 1009.', 65_536, 16 * 1024 * 1024),
    max_sessions: positive('Concurrent sessions (connections that finished the TLS handshake) per listener; more are refused and counted.', 20_000, 1_000_000),
    max_pending_handshakes: positive(
      'Connections per listener that may be in the TLS handshake at once; more are reset as soon as they connect, before any TLS work, and counted (reason max_pending_handshakes). They do not count against max_sessions.',
      1_000,
      1_000_000,
    ),
    max_pending_handshakes_per_address: positive(
      'Connections from one source IP address that may be in the TLS handshake at once, per listener; more are reset at once and counted (reason max_pending_handshakes_per_address), so one address cannot take every handshake slot.',
      64,
      1_000_000,
    ),
    max_send_buffer_bytes: positive('When this many response bytes wait unsent to a client that does not read, the daemon stops reading its requests until they drain.', 1_048_576, 1 << 30),
    ping_interval_ms: positive('Interval of WebSocket pings on a session; a session that has not answered the previous ping by the next one is closed.', 30_000, 3_600_000),
  })
  .strict();

export const metricsSchema = z
  .object({
    enabled: z.boolean().default(true).describe('Serve /metrics, /healthz and /readyz over plain HTTP.'),
    host: z.string().min(1).default('127.0.0.1').describe('Address of the metrics and health listener. Keep it on loopback or a management network.'),
    port: port('Port of the metrics and health listener.', 2406),
  })
  .strict();

export const compatSchema = z
  .object({
    enabled: z.boolean().default(false).describe("Serve Cloudflare's Keyless SSL binary protocol (for existing edges and tools)."),
    host: z.string().min(1).default('127.0.0.1').describe('Address of the Cloudflare-protocol listener.'),
    port: port('Port of the Cloudflare-protocol listener.', 2407),
    min_version: tlsVersion
      .default('TLSv1.2')
      .describe('Lowest TLS version on this port. Deployed edges use 1.2; only ECDHE with AES-GCM or ChaCha20-Poly1305 is allowed.'),
  })
  .strict()
  .describe('The Cloudflare-compatible listener. It uses the tls section\'s certificate and client CA, and the same policy, audit and metrics.');

export const keyOptionsSchema = z
  .object({
    decrypt: z.boolean().default(false).describe('Allow RSA-OAEP decryption (RSA_OAEP_SHA256) with this key.'),
    decrypt_raw: z
      .boolean()
      .default(false)
      .describe(
        'Allow raw RSA decryption (RSA_RAW: TLS 1.2 RSA key exchange, and the compatibility port\'s RSA decrypt). Raw RSA is the private-key operation itself, so whoever may ask for it can compute any RSA signature with this key, whatever `policy.operations` and `policy.algorithms` say about signing: grant it only to keys that must serve TLS 1.2 RSA key exchange.',
      ),
    policy: keyPolicySchema.optional().describe('Who may use this key. Without one, default_policy decides.'),
  })
  .strict();

export const backendSchema = z.discriminatedUnion('type', [fileBackendSchema, pkcs11BackendSchema, cngBackendSchema]);

export const configSchema = z
  .object({
    listen: listenSchema.prefault({}),
    tls: tlsSchema,
    limits: limitsSchema.prefault({}),
    metrics: metricsSchema.prefault({}),
    compat: compatSchema.prefault({}),
    log: z
      .object({ level: z.enum(LOG_LEVELS).default('info').describe('Lowest level written to the JSON log on stdout.') })
      .strict()
      .prefault({}),
    pid_file: z.string().min(1).optional().describe('File the daemon writes its process id to.'),
    backends: z.array(backendSchema).min(1, { error: 'expected at least one backend' }).describe('Key stores to serve keys from.'),
    keys: z.record(z.string(), keyOptionsSchema).default({}).describe('Per-key settings, by key name.'),
    groups: z.record(z.string(), groupSchema).default({}).describe('Client groups (regions are groups), by name, for key policies.'),
    default_policy: defaultPolicySchema,
    audit: auditSchema.prefault({}),
  })
  .strict();

export type Config = z.infer<typeof configSchema>;
export type BackendConfig = z.infer<typeof backendSchema>;
