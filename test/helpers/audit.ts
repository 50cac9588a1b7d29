import { readFileSync } from 'node:fs';
import { join } from 'node:path';

/** The records of the audit log `audit.log` in `dir` (a test daemon writes it in its PKI folder), one object per line. */
export function auditRecords(dir: string): Array<Record<string, any>> {
  return readFileSync(join(dir, 'audit.log'), 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line));
}
