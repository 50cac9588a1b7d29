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
    on_failure: z
      .enum(['refuse', 'continue'])
      .default('refuse')
      .describe('When the log cannot be written: refuse key operations with BACKEND_UNAVAILABLE and report not ready (refuse), or keep serving and count the records lost (continue).'),
  })
  .strict();

export type AuditConfig = z.infer<typeof auditSchema>;
