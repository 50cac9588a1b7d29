import { z } from 'zod';
import { backendFields, timeoutField } from '../schema';

export const cngKeySchema = z
  .object({
    name: z.string().min(1).optional().describe('Name keylessd serves the key under (policy, `keys:` settings, KeyInfo). Defaults to key_name.'),
    key_name: z.string().min(1).max(1024).describe('The CNG key name in the provider (the name given to NCryptCreatePersistedKey, as `certutil -csp ... -key` lists it).'),
    machine: z.boolean().default(false).describe('A machine key (NCRYPT_MACHINE_KEY_FLAG) rather than a key of the user the service runs as.'),
  })
  .strict();

export const cngBackendSchema = z
  .object({
    ...backendFields('cng', 'cng'),
    provider: z
      .string()
      .min(1)
      .default('Microsoft Software Key Storage Provider')
      .describe('CNG key storage provider holding the keys: `Microsoft Software Key Storage Provider`, `Microsoft Platform Crypto Provider` (TPM), or a vendor HSM KSP by its registered name.'),
    keys: z.array(cngKeySchema).min(1, { error: 'expected at least one key' }).describe('Persisted CNG keys to serve; opened silently (never prompting) by name.'),
    shim_path: z
      .string()
      .min(1)
      .optional()
      .describe('Path of keyless-cng-shim.exe. Defaults to backends/cng/shim/keyless-cng-shim.exe in the keylessd package (built by scripts/build-cng-shim.sh).'),
    wine: z.boolean().default(false).describe('Run the shim through `wine` (non-Windows hosts: development and tests only; Wine cannot open persisted keys).'),
    timeout_ms: timeoutField('Deadline for one operation; past it the request answers TIMEOUT (the shim\'s late answer is dropped).'),
    workers: z.number().int().min(1).max(64).default(4).describe('Worker threads in the shim, i.e. CNG operations run at once. A TPM serialises anyway; a software or network HSM KSP gains from more.'),
  })
  .strict();

export type CngBackendConfig = z.infer<typeof cngBackendSchema>;
export type CngKeyConfig = z.infer<typeof cngKeySchema>;
