import { z } from 'zod';
import { SIGNATURE_ALGORITHMS } from '../crypto/algorithms';

const patterns = (what: string) => z.array(z.string().min(1)).optional().describe(what);

export const groupSchema = z
  .object({
    subject_cn: patterns('Client certificate subject CN patterns (`*` wildcard).'),
    subject_o: patterns('Client certificate subject O patterns.'),
    subject_ou: patterns('Client certificate subject OU patterns.'),
    san_dns: patterns('Client certificate SAN DNS patterns; `*` matches within one label.'),
    san_uri: patterns('Client certificate SAN URI patterns.'),
    fingerprints: z
      .array(z.string().regex(/^([0-9a-fA-F]{2}:?){31}[0-9a-fA-F]{2}$/, { error: 'expected a SHA-256 fingerprint: 64 hex digits, colons allowed' }))
      .optional()
      .describe('SHA-256 fingerprints of client certificates (hex; colons and case ignored).'),
    compliance_regions: z
      .array(z.number().int().min(0).max(255))
      .optional()
      .describe('Compliance region bytes (Cloudflare-compatible port, item 0x17). A request carrying one of these belongs to the group.'),
  })
  .strict()
  .refine((g) => Object.values(g).some((v) => v !== undefined && v.length > 0), { error: 'a group needs at least one matcher' })
  .describe(
    'A client group (a region is a group). A client belongs when any listed certificate fact matches one of its patterns; with compliance_regions also set, the request must carry one of those regions too.',
  );

export const keyPolicySchema = z
  .object({
    groups: z.array(z.string().min(1)).min(1, { error: 'name at least one group' }).describe('Groups allowed to use the key.'),
    operations: z
      .array(z.enum(['sign', 'decrypt', 'decrypt_raw']))
      .min(1)
      .default(['sign', 'decrypt'])
      .describe(
        'Operations those groups may perform: sign, decrypt (RSA-OAEP; also needs the key\'s `decrypt: true`) and decrypt_raw (RSA_RAW, TLS 1.2 RSA key exchange; never granted by default, and also needs the key\'s `decrypt_raw: true`).',
      ),
    algorithms: z.array(z.enum(SIGNATURE_ALGORITHMS)).min(1).optional().describe('Signature algorithms allowed; default all the key type supports.'),
  })
  .strict();

export const defaultPolicySchema = z
  .enum(['allow', 'deny'])
  .default('allow')
  .describe('What happens for keys without a `policy`: any authenticated client may use them (allow), or none (deny).');

export type GroupConfig = z.infer<typeof groupSchema>;
export type KeyPolicyConfig = z.infer<typeof keyPolicySchema>;
