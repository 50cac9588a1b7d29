import { Writable } from 'node:stream';
import { createLogger } from '../../src/log';

function capture(): { stream: Writable; lines: () => Array<Record<string, unknown>> } {
  let text = '';
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      text += chunk.toString();
      done();
    },
  });
  return { stream, lines: () => text.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>) };
}

test('secrets are redacted at any depth, and a PKCS#11 URI keeps everything but its pin-value', () => {
  const { stream, lines } = capture();
  const logger = createLogger('info', stream);
  logger.info(
    {
      pin: '1111',
      config: {
        backends: [
          { type: 'pkcs11', uri: 'pkcs11:token=hsm;object=k?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=2222', pin_value: '3333' },
          { type: 'file', files: [{ path: '/k.pem', passphrase: '4444' }] },
        ],
        tls: { password: '5555', deeper: { privateKey: '6666', 'pin-value': '7777' } },
      },
      url: 'pkcs11:token=x?pin-value=8888',
      harmless: 'pin is a word',
    },
    'config loaded',
  );
  const [line] = lines();
  const text = JSON.stringify(line);
  for (const secret of ['1111', '2222', '3333', '4444', '5555', '6666', '7777', '8888']) expect(text).not.toContain(secret);
  expect(line).toMatchObject({
    pin: '[redacted]',
    harmless: 'pin is a word',
    url: 'pkcs11:token=x?pin-value=[redacted]',
    config: {
      backends: [
        { type: 'pkcs11', uri: 'pkcs11:token=hsm;object=k?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=[redacted]', pin_value: '[redacted]' },
        { type: 'file', files: [{ path: '/k.pem', passphrase: '[redacted]' }] },
      ],
      tls: { password: '[redacted]', deeper: { privateKey: '[redacted]', 'pin-value': '[redacted]' } },
    },
  });
});
