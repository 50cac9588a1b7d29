import { z } from 'zod';
import { backendFields, timeoutField } from '../schema';

export const fileKeySchema = z
  .object({
    path: z.string().min(1).describe('Path of a private key file: PEM or DER; PKCS#8 (optionally encrypted), PKCS#1 or SEC1.'),
    name: z.string().min(1).optional().describe('Name clients use for this key. Default: the file name without its extension.'),
    passphrase_file: z.string().min(1).optional().describe('File holding the passphrase of an encrypted PKCS#8 key (one trailing newline is ignored).'),
  })
  .strict();

export const fileBackendSchema = z
  .object({
    ...backendFields('file', 'files'),
    dir: z.string().min(1).optional().describe('Directory scanned for key files (not recursive). Files that hold no usable private key are skipped with a log line.'),
    passphrase_file: z.string().min(1).optional().describe('Passphrase file used for encrypted keys found by the directory scan.'),
    files: z.array(fileKeySchema).default([]).describe('Key files listed one by one.'),
    timeout_ms: timeoutField('Deadline for one signature or decryption; past it the request answers TIMEOUT.'),
  })
  .strict()
  .refine((c) => c.dir !== undefined || c.files.length > 0, { message: 'needs `dir` or at least one entry in `files`' });

export type FileBackendConfig = z.infer<typeof fileBackendSchema>;
