import { validateConfig } from '../../src/config/load';
import { ConfigError } from '../../src/errors';

const tls = { cert: '/c', key: '/k', client_ca: '/ca' };

function problem(backends: unknown[]): string {
  try {
    validateConfig({ tls, backends });
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as Error).message;
  }
  throw new Error('expected the config to be refused');
}

test('a bad PKCS#11 URI names the backend by its name, not only by its index', () => {
  expect(problem([{ type: 'pkcs11', name: 'hsm', uri: 'pkcs11:token=My Token?module-path=/x.so' }])).toBe(
    'backends.hsm.uri: pkcs11 URI attribute token: U+0020 at position 16 is not allowed unencoded in a path attribute value (RFC 7512 §2.3); write %20',
  );
  const message = problem([
    { type: 'file', name: 'disk', dir: '/keys' },
    { type: 'pkcs11', name: 'edge-hsm', uri: 'pkcs11:slot-id=x?module-path=/x.so' },
  ]);
  expect(message).toBe('backends.edge-hsm.uri: pkcs11 URI attribute slot-id: must be a decimal CK_SLOT_ID (digits only), got "x"');
});

test('an entry without a name keeps its index', () => {
  expect(problem([{ type: 'pkcs11', uri: 'pkcs12:token=a' }])).toBe('backends[0].uri: expected an RFC 7512 URI starting with "pkcs11:"');
});
