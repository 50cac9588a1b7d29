import { z } from 'zod';
import { backendFields, timeoutField } from '../schema';
import { ConfigError } from '../../src/errors';
import { parsePkcs11Uri } from './uri';

/** A bad URI is a config error at load (and --check-config), not only when the backend opens. */
function checkUri(uri: string, ctx: z.RefinementCtx): void {
  if (!/^pkcs11:/i.test(uri)) return; // reported by the regex
  try {
    parsePkcs11Uri(uri);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    ctx.addIssue({ code: 'custom', message: err.message });
  }
}

export const pkcs11BackendSchema = z
  .object({
    ...backendFields('pkcs11', 'hsm'),
    uri: z
      .string()
      .regex(/^pkcs11:/i, { error: 'expected an RFC 7512 URI starting with "pkcs11:"' })
      .superRefine(checkUri)
      .describe(
        'RFC 7512 URI (the scheme in any case): module-path (or module-name), the token (token, serial, manufacturer, model or slot-id), optionally the keys (object label and/or id; none: every private key on the token), and pin-source=file:/path or |/command, or pin-value.',
      ),
    pool_size: z
      .number()
      .int()
      .min(1)
      .max(256)
      .default(4)
      .describe('PKCS#11 sessions kept open on the token; each runs one operation at a time. Session-limited tokens (a YubiKey) want 1 or 2.'),
    max_queue: z.number().int().min(0).max(1_000_000).default(4096).describe('Requests that may wait for a free session; beyond it they answer OVERLOADED at once.'),
    key_names: z
      .record(z.string().min(1), z.string().min(1))
      .default({})
      .describe(
        'Names to serve keys under instead of their labels: `LABEL: name`, or `"id:HEX": name` for the object with that CKA_ID (hex). Use it when two tokens (or two objects on one token) carry the same label.',
      ),
    timeout_ms: timeoutField('Deadline for one operation; past it the request answers TIMEOUT and the session is reused only once the token returns.'),
  })
  .strict();

export type Pkcs11BackendConfig = z.infer<typeof pkcs11BackendSchema>;
