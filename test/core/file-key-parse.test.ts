/**
 * Key files that a passphrase does not open get one message, whatever OpenSSL reports: a
 * wrong passphrase usually fails the padding check ("bad decrypt"), but about once in 256
 * tries it passes and the garbage fails to decode instead (seen under load in CI as a flaky
 * "cannot be parsed: DECODER routines::unsupported").
 */
import { createPrivateKey, generateKeyPairSync, type KeyExportOptions } from 'node:crypto';
import { KeyFileError, parsePrivateKey } from '../../backends/file/parse';

const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const MESSAGE = 'cannot be decrypted: wrong passphrase, or the file is damaged';

/** A wrong passphrase for which OpenSSL's own error is not "bad decrypt" (found by trying; ~256 tries expected). */
function passphraseThatDecryptsToGarbage(open: (passphrase: string) => unknown): string {
  for (let i = 0; i < 20_000; i++) {
    const candidate = `wrong-${i}`;
    try {
      open(candidate);
    } catch (err) {
      if (!/bad decrypt/.test((err as Error).message)) return candidate;
    }
  }
  throw new Error('no wrong passphrase in 20,000 got past the padding check');
}

function failure(bytes: Buffer, passphrase: string | undefined): unknown {
  try {
    parsePrivateKey(bytes, passphrase);
  } catch (err) {
    return err;
  }
  return undefined;
}

test.each([
  ['encrypted PKCS#8 PEM', { format: 'pem', type: 'pkcs8', cipher: 'aes-256-cbc', passphrase: 'right' }],
  ['legacy encrypted SEC1 PEM', { format: 'pem', type: 'sec1', cipher: 'aes-256-cbc', passphrase: 'right' }],
  ['encrypted PKCS#8 DER', { format: 'der', type: 'pkcs8', cipher: 'aes-256-cbc', passphrase: 'right' }],
] as const)('%s: a wrong passphrase that decrypts to garbage is reported as a wrong passphrase', (_name, options) => {
  const bytes = Buffer.from(privateKey.export(options as KeyExportOptions<'pem'>));
  const format = options.format;
  const wrong = passphraseThatDecryptsToGarbage((passphrase) => createPrivateKey(format === 'der' ? { key: bytes, format, type: 'pkcs8', passphrase } : { key: bytes, format, passphrase }));
  const err = failure(bytes, wrong);
  expect(err).toBeInstanceOf(KeyFileError);
  expect((err as Error).message).toBe(MESSAGE);
  expect((failure(bytes, 'plainly wrong') as Error).message).toBe(MESSAGE);
  expect(parsePrivateKey(bytes, 'right').export({ format: 'der', type: 'pkcs8' })).toEqual(privateKey.export({ format: 'der', type: 'pkcs8' }));
});

test('a damaged encrypted PEM names both causes; a damaged plain PEM says it cannot be parsed', () => {
  const encrypted = String(privateKey.export({ format: 'pem', type: 'pkcs8', cipher: 'aes-256-cbc', passphrase: 'right' }));
  const lines = encrypted.split('\n');
  lines[2] = lines[2]!.replace(/^./, (c: string) => (c === 'A' ? 'B' : 'A'));
  expect((failure(Buffer.from(lines.join('\n')), 'right') as Error).message).toBe(MESSAGE);

  const plain = String(privateKey.export({ format: 'pem', type: 'pkcs8' }));
  const broken = plain.replace(/\n[A-Za-z0-9+/]{8}/, '\n********');
  expect((failure(Buffer.from(broken), undefined) as Error).message).toMatch(/^cannot be parsed: /);
});
