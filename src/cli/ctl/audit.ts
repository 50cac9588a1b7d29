import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { loadAuditPublicKey } from '../../audit/signing';
import { auditLogFiles, latestCheckpoint, verifyAuditFiles } from '../../audit/verify';
import type { Command } from './commands';
import { UsageError } from './connection';
import { CheckFailedError } from './exit';

function readFlagFile(flag: string, path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw new UsageError(`${flag}: cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
  }
}

/** One path names the log (its rotated files are found beside it); several name the files, oldest first. */
function filesOf(paths: string[]): string[] {
  if (paths.length !== 1) return paths;
  const files = auditLogFiles(paths[0]!);
  if (files.length === 0) throw new UsageError(`no audit log at ${paths[0]} (nor rotated files beside it)`);
  return files;
}

export const audit: Command = {
  summary: 'check an audit log (audit verify LOG), print its latest signed checkpoint (audit checkpoint LOG)',
  help: `Usage: keylessctl audit verify [--public-key FILE] [--anchor FILE] [--json] LOG
       keylessctl audit verify [options] FILE...      (rotated files oldest first, then the current one)
       keylessctl audit checkpoint LOG > anchor.json

verify checks the hash chain of the log at LOG (e.g. /var/lib/keylessd/audit.log; its
rotated files audit.log.<seq> beside it are found), that it starts at its genesis record
or where a retention record says, and
  --public-key FILE   that every checkpoint and retention record is signed by the audit
                      signing key whose public half is FILE (PEM)
  --anchor FILE       that the log still holds the checkpoint in FILE, saved earlier with
                      'audit checkpoint': catches records cut off the end and rewritten logs
It prints what it verified, or the first record that is wrong (file and line), and exits 1.
--json prints the result as one JSON object either way.

checkpoint prints the newest signed checkpoint record of LOG: keep it off this host.`,
  async run(argv) {
    const { values, positionals } = parseArgs({ args: argv, options: { 'public-key': { type: 'string' }, anchor: { type: 'string' }, json: { type: 'boolean' } }, allowPositionals: true, strict: true });
    const [sub, ...paths] = positionals;
    if (sub === 'checkpoint') {
      if (paths.length !== 1) throw new UsageError('usage: keylessctl audit checkpoint LOG');
      const line = latestCheckpoint(paths[0]!);
      if (!line) throw new UsageError(`${paths[0]} holds no checkpoint yet (checkpoints need audit.signing_key)`);
      process.stdout.write(`${line}\n`);
      return;
    }
    if (sub !== 'verify') throw new UsageError('usage: keylessctl audit verify|checkpoint … (see --help)');
    if (paths.length === 0) throw new UsageError('name the audit log (or its files)');
    let publicKey;
    if (values['public-key'] !== undefined) {
      try {
        publicKey = loadAuditPublicKey(readFlagFile('--public-key', values['public-key']));
      } catch (err) {
        throw new UsageError(`--public-key ${values['public-key']}: ${(err as Error).message}`, { cause: err });
      }
    }
    const anchor = values.anchor === undefined ? undefined : readFlagFile('--anchor', values.anchor);
    const files = filesOf(paths);
    const result = verifyAuditFiles(files, { publicKey, anchor });
    if (values.json) process.stdout.write(`${JSON.stringify({ files, ...result, anchor: anchor !== undefined })}\n`);
    if (!result.ok) throw new CheckFailedError(`audit log broken at ${result.file}:${result.line}: ${result.reason}`);
    if (values.json) return;
    const signatures = publicKey ? `, ${result.signaturesChecked} signed records verified` : result.checkpoints > 0 ? ' (signatures not checked: give --public-key)' : '';
    process.stdout.write(
      `OK: ${result.records} records (${result.firstSeq}–${result.lastSeq}) verified in ${files.length} file(s), ${result.checkpoints} checkpoints${signatures}${anchor ? ', anchor found' : ''}\n`,
    );
  },
};
