import { z } from 'zod';

export const auditSchema = z
  .object({
    enabled: z.boolean().default(true).describe('Write the audit log. Turning it off is for benchmarks; every deployment should keep it.'),
    path: z.string().min(1).optional().describe('Audit log file. Default: audit.log in the state folder (embedded default) or /var/lib/keylessd/audit.log.'),
    max_bytes: z
      .number()
      .int()
      .min(4096)
      .default(100 * 1024 * 1024)
      .describe('Size at which the file is rotated (renamed to PATH.<last seq>) and a new one started, linked to the last hash of the old.'),
    flush_interval_ms: z.number().int().min(10).max(1000).default(1000).describe('Longest time between fsyncs of written records.'),
    signing_key: z
      .string()
      .min(1)
      .optional()
      .describe(
        'Ed25519 private key (PEM) that signs checkpoints and retention records, so anyone holding its public half can check the log without trusting this host. Keep it separate from every served key; `keylessctl pki init` writes one (audit-signing.key). Without it no checkpoint is written.',
      ),
    checkpoint_every_records: z.number().int().min(1).default(10_000).describe('Write a signed checkpoint after this many records (needs signing_key).'),
    checkpoint_interval_s: z.number().int().min(1).max(86_400).default(60).describe('…or this many seconds after the last checkpoint if any record was written since; and always at stop.'),
    keep_files: z.number().int().min(1).optional().describe('Retention: keep at most this many rotated files; the daemon deletes the oldest itself and writes a (signed) retention record naming them, so verify still holds.'),
    max_total_bytes: z.number().int().min(8192).optional().describe('Retention: keep the current and rotated files together under this many bytes, deleting the oldest rotated files as keep_files does.'),
    on_failure: z
      .enum(['refuse', 'continue'])
      .default('refuse')
      .describe('When the log cannot be written: refuse key operations with BACKEND_UNAVAILABLE and report not ready (refuse), or keep serving and count the records lost (continue).'),
  })
  .strict();

export type AuditConfig = z.infer<typeof auditSchema>;
