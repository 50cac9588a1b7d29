import { parseArgs } from 'node:util';
import { addClient, refreshCrl, revoke, PkiError } from '../../pki/clients';
import { UsageError } from './connection';
import { CheckFailedError } from './exit';

export const PKI_CLIENT_HELP = `       keylessctl pki add-client NAME [--dir DIR] [--org O] [--ou OU] [--days N] [--json]
       keylessctl pki revoke (CERT_FILE | NAME | SERIAL_HEX) [--dir DIR] [--crl-days N] [--json]
       keylessctl pki crl [--dir DIR] [--crl-days N] [--json]

add-client issues another edge certificate from the CA in DIR (default .): DIR/clients/NAME.crt
and NAME.key, subject CN=NAME (O, OU as given: an OU can name a region for policy groups).
revoke adds a certificate to DIR/crl.pem, the file tls.crl names; send keylessd SIGHUP and
its handshakes are refused from then on. crl re-signs the CRL with a new validity: a CRL past
its next update makes every handshake fail, so refresh it before then (default 90 days).
Both need DIR/ca.key: run them where the CA key is kept, then copy crl.pem to the servers.`;

function days(flag: string, text: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1 || n > 36500) throw new UsageError(`--${flag} must be a whole number of days from 1 to 36500, got ${text}`);
  return n;
}

async function pkiAction<T>(action: () => Promise<T>): Promise<T> {
  try {
    return await action();
  } catch (err) {
    if (err instanceof PkiError) throw new CheckFailedError(err.message, { cause: err });
    throw err;
  }
}

/** `pki add-client`, `pki revoke`, `pki crl`; argv starts with the subcommand. */
export async function runPkiClients(argv: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: {
      dir: { type: 'string', default: '.' },
      org: { type: 'string' },
      ou: { type: 'string' },
      days: { type: 'string', default: '397' },
      'crl-days': { type: 'string', default: '90' },
      json: { type: 'boolean' },
    },
    allowPositionals: true,
    strict: true,
  });
  const [sub, target] = positionals;
  const dir = values.dir!;
  const out = (json: object, text: string) => process.stdout.write(values.json ? `${JSON.stringify(json)}\n` : text);
  if (sub === 'add-client') {
    if (!target) throw new UsageError('usage: keylessctl pki add-client NAME [--dir DIR] [--org O] [--ou OU]');
    const issued = await pkiAction(() => addClient(dir, target, { organization: values.org, organizationalUnit: values.ou, days: days('days', values.days!) }));
    out(
      { cert: issued.certFile, key: issued.keyFile, serial: issued.serial, sha256: issued.sha256, not_after: issued.notAfter.toISOString() },
      `wrote ${issued.certFile} and ${issued.keyFile}\nserial ${issued.serial}, SHA-256 ${issued.sha256}, valid until ${issued.notAfter.toISOString()}\n`,
    );
    return;
  }
  if (sub === 'revoke') {
    if (!target) throw new UsageError('usage: keylessctl pki revoke (CERT_FILE | NAME | SERIAL_HEX) [--dir DIR]');
    const result = await pkiAction(() => revoke(dir, target, days('crl-days', values['crl-days']!)));
    out(
      { serial: result.serial, already_revoked: result.already, crl: result.crlFile, next_update: result.nextUpdate.toISOString() },
      `${result.already ? 'already revoked' : 'revoked'}: ${result.label}, serial ${result.serial}\n` +
        `wrote ${result.crlFile} (valid until ${result.nextUpdate.toISOString()}); copy it to where tls.crl points and send keylessd SIGHUP\n`,
    );
    return;
  }
  if (sub === 'crl') {
    const result = await pkiAction(() => refreshCrl(dir, days('crl-days', values['crl-days']!)));
    out(
      { crl: result.crlFile, entries: result.entries, next_update: result.nextUpdate.toISOString() },
      `wrote ${result.crlFile}: ${result.entries} revoked certificate(s), valid until ${result.nextUpdate.toISOString()}\n`,
    );
    return;
  }
  throw new UsageError(`unknown pki subcommand ${sub}; choose init, add-client, revoke or crl`);
}
