import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { ConfigError } from '../../src/errors';
import { parsePkcs11Uri, type Pkcs11Uri } from '../../backends/pkcs11/uri';
import { pkcs11BackendSchema } from '../../backends/pkcs11/schema';

interface Example {
  uri: string;
  path: Record<string, unknown>;
  query: Record<string, string>;
}

// The project's shared conformance file sits beside the repository (in CI too); the copy in
// test/fixtures is for a checkout without it.
const shared = join(__dirname, '..', '..', '..', 'shared', 'conformance', 'rfc7512-examples.json');
const conformanceFile = existsSync(shared) ? shared : join(__dirname, '..', 'fixtures', 'rfc7512-examples.json');
const conformance = JSON.parse(readFileSync(conformanceFile, 'utf8')) as { valid: Example[] };

const PATH_NAMES: Record<string, keyof Pkcs11Uri> = {
  token: 'token', manufacturer: 'manufacturer', serial: 'serial', model: 'model', object: 'object', type: 'type',
  'library-manufacturer': 'libraryManufacturer', 'library-description': 'libraryDescription', 'library-version': 'libraryVersion',
  'slot-manufacturer': 'slotManufacturer', 'slot-description': 'slotDescription', 'slot-id': 'slotId',
};

/** The parse in the conformance file's own terms, so the comparison covers every attribute. */
function asConformance(uri: Pkcs11Uri): { path: Record<string, unknown>; query: Record<string, string> } {
  const path: Record<string, unknown> = {};
  for (const [name, field] of Object.entries(PATH_NAMES)) if (uri[field] !== undefined) path[name] = uri[field];
  if (uri.id !== undefined) path.id_hex = uri.id.toString('hex');
  Object.assign(path, uri.vendor);
  const query: Record<string, string> = { ...uri.unknownQuery };
  if (uri.pinSource) query['pin-source'] = uri.pinSource.kind === 'file' ? `file:${uri.pinSource.path}` : `|${uri.pinSource.command}`;
  if (uri.pinValue !== undefined) query['pin-value'] = uri.pinValue;
  if (uri.moduleName !== undefined) query['module-name'] = uri.moduleName;
  if (uri.modulePath !== undefined) query['module-path'] = uri.modulePath;
  return { path, query };
}

test.each(conformance.valid.map((e) => [e.uri, e] as const))('RFC 7512 example %s', (_uri, example) => {
  expect(asConformance(parsePkcs11Uri(example.uri))).toEqual({ path: example.path, query: example.query });
});

test('+ is a literal plus and id bytes are not UTF-8', () => {
  const uri = parsePkcs11Uri('pkcs11:object=a+b;id=%ff%00%2b+');
  expect(uri.object).toBe('a+b');
  expect(uri.id).toEqual(Buffer.from([0xff, 0x00, 0x2b, 0x2b]));
});

test.each([
  ['pkcs11:token=a;token=b', 'pkcs11 URI attribute token: appears twice'],
  ['pkcs11:object=k?module-path=/a.so&module-path=/b.so', 'pkcs11 URI attribute module-path: appears twice'],
  ['pkcs11:object=k?module-name=a&module-name=b', 'pkcs11 URI attribute module-name: appears twice'],
  ['pkcs11:object=k?pin-source=file:/p&pin-value=1234', 'pkcs11 URI attribute pin-value: cannot be given together with pin-source'],
  ['pkcs11:object=k?module-path=lib/softhsm2.so', 'pkcs11 URI attribute module-path: must be an absolute path, got "lib/softhsm2.so"'],
  ['pkcs11:object=k?pin-source=file:pin.txt', 'pkcs11 URI attribute pin-source: must be file:/absolute/path or |/absolute/command'],
  ['pkcs11:object=k?pin-source=|get-pin', 'pkcs11 URI attribute pin-source: a command must be an absolute path: "|/path/to/command"'],
  [`pkcs11:manufacturer=${'x'.repeat(33)}`, 'pkcs11 URI attribute manufacturer: is 33 bytes; PKCS#11 allows at most 32'],
  [`pkcs11:serial=${'1'.repeat(17)}`, 'pkcs11 URI attribute serial: is 17 bytes; PKCS#11 allows at most 16'],
  ['pkcs11:library-version=256', 'pkcs11 URI attribute library-version: version numbers are bytes (0-255), got "256"'],
  ['pkcs11:library-version=1.2.3', 'pkcs11 URI attribute library-version: expected M or M.N, got "1.2.3"'],
  ['pkcs11:slot-id=-1', 'pkcs11 URI attribute slot-id: must be a decimal CK_SLOT_ID (digits only), got "-1"'],
  ['pkcs11:slot-id=abc', 'pkcs11 URI attribute slot-id: must be a decimal CK_SLOT_ID (digits only), got "abc"'],
  ['pkcs11:type=key', 'pkcs11 URI attribute type: must be one of public, private, cert, secret-key, data, got "key"'],
  ['pkcs11:object=%zz', 'pkcs11 URI attribute object: bad percent-escape "%zz"'],
  ['pkcs11:object=%c3', 'pkcs11 URI attribute object: is not valid UTF-8 text'],
  ['pkcs11:object', 'pkcs11 URI attribute object: path attributes are name=value pairs separated by ";"'],
  ['pkcs12:object=k', 'pkcs11 URI: must start with "pkcs11:", not "pkcs12:"'],
  ['token=a', 'pkcs11 URI: must start with "pkcs11:"'],
  ['pkcs11:TOKEN=a;token=b', 'pkcs11 URI attribute token: appears twice'],
  ['pkcs11:id=%01;id=%02', 'pkcs11 URI attribute id: appears twice'],
  ['pkcs11:object=k?pin-source=file:/a&pin-source=file:/b', 'pkcs11 URI attribute pin-source: appears twice'],
  ['pkcs11:object=k?module-path=./lib.so', 'pkcs11 URI attribute module-path: must be an absolute path, got "./lib.so"'],
  ['pkcs11:id=%0', 'pkcs11 URI attribute id: bad percent-escape "%0"'],
  ['pkcs11:object=50%', 'pkcs11 URI attribute object: bad percent-escape "%"'],
  ['pkcs11:slot-id=18446744073709551616', 'pkcs11 URI attribute slot-id: is larger than a CK_SLOT_ID can be (2^64 - 1), got "18446744073709551616"'],
  ['pkcs11:slot-id=1.5', 'pkcs11 URI attribute slot-id: must be a decimal CK_SLOT_ID (digits only), got "1.5"'],
  ['pkcs11:slot-id=', 'pkcs11 URI attribute slot-id: must be a decimal CK_SLOT_ID (digits only), got ""'],
  ['pkcs11:library-version=1.256', 'pkcs11 URI attribute library-version: version numbers are bytes (0-255), got "1.256"'],
  [`pkcs11:model=${'m'.repeat(17)}`, 'pkcs11 URI attribute model: is 17 bytes; PKCS#11 allows at most 16'],
  [`pkcs11:library-description=${'%C3%A1'.repeat(17)}`, 'pkcs11 URI attribute library-description: is 34 bytes; PKCS#11 allows at most 32'],
  ['pkcs11:type=privat', 'pkcs11 URI attribute type: must be one of public, private, cert, secret-key, data, got "privat"'],
  // Characters the grammar does not allow unencoded, with their position in the URI (1-based).
  ['pkcs11:token=My Token', 'pkcs11 URI attribute token: U+0020 at position 16 is not allowed unencoded in a path attribute value (RFC 7512 §2.3); write %20'],
  ['pkcs11:object=clé', 'pkcs11 URI attribute object: U+00E9 at position 17 is not allowed unencoded in a path attribute value (RFC 7512 §2.3); write %C3%A9'],
  ['pkcs11:object=a#b', 'pkcs11 URI attribute object: "#" at position 16 is not allowed unencoded in a path attribute value (RFC 7512 §2.3); write %23'],
  ['pkcs11:object=a/b', 'pkcs11 URI attribute object: "/" at position 16 is not allowed unencoded in a path attribute value (RFC 7512 §2.3); write %2F'],
  ['pkcs11:object=k?module-path=/usr/lib/a;b.so', 'pkcs11 URI attribute module-path: ";" at position 39 is not allowed unencoded in a query attribute value (RFC 7512 §2.3); write %3B'],
  ['pkcs11:object=k?pin-source=file:/etc/pin#1', 'pkcs11 URI attribute pin-source: "#" at position 41 is not allowed unencoded in a query attribute value (RFC 7512 §2.3); write %23'],
  ['pkcs11:object=k?module-path=/opt/my lib.so', 'pkcs11 URI attribute module-path: U+0020 at position 36 is not allowed unencoded in a query attribute value (RFC 7512 §2.3); write %20'],
  ['pkcs11:x.vendor=1', 'pkcs11 URI attribute the path: "." at position 9 is not allowed unencoded in an attribute name (RFC 7512 §2.3); write %2E'],
  ['pkcs11:object=k?x vendor=1', 'pkcs11 URI attribute the query: U+0020 at position 18 is not allowed unencoded in an attribute name (RFC 7512 §2.3); write %20'],
  ['pkcs11:object=k?s3cret', 'pkcs11 URI attribute the query: the item at position 17 is not a name=value pair (query attributes are separated by "&")'],
  ['pkcs11:token=a;module-path=/x.so', 'pkcs11 URI attribute module-path: is a query attribute: put it after "?" (pkcs11:token=...?module-path=...)'],
  ['pkcs11:token=a;pin-value=1234', 'pkcs11 URI attribute pin-value: is a query attribute: put it after "?" (pkcs11:token=...?pin-value=...)'],
  ['pkcs11:object=k?module-name=/usr/lib/libx.so', 'pkcs11 URI attribute module-name: is a module\'s name without path, "lib" prefix or suffix (module-name=softhsm2 for libsofthsm2.so), got "/usr/lib/libx.so"'],
  ['pkcs11:token=a;=b', 'pkcs11 URI attribute =b: path attributes are name=value pairs separated by ";"'],
])('%s is refused, naming the attribute', (uri, message) => {
  expect(() => parsePkcs11Uri(uri)).toThrow(new ConfigError(message.slice(0, message.indexOf(': ')), message.slice(message.indexOf(': ') + 2)));
});

test.each(['pkcs11:object=k?pin-value=s3cret&pin-source=file:/p', 'pkcs11:object=k?pin-value=s3%cr', 'pkcs12:?pin-value=s3cret', 'pkcs11:object=k?pin-value=s3c;ret', 'pkcs11:object=k?pin-value=s3cé'])('an error never echoes a pin-value: %s', (uri) => {
  expect(() => parsePkcs11Uri(uri)).toThrow(ConfigError);
  expect(() => parsePkcs11Uri(uri)).not.toThrow(/s3/);
});

test('the scheme and attribute names are case-insensitive; values are not', () => {
  const uri = parsePkcs11Uri('PKCS11:Token=My%20Token;OBJECT=Key?Module-Path=/lib/x.so');
  expect([uri.token, uri.object, uri.modulePath]).toEqual(['My Token', 'Key', '/lib/x.so']);
});

test('literal values of the grammar are case-insensitive: type=PRIVATE is type=private', () => {
  expect(parsePkcs11Uri('pkcs11:type=PRIVATE').type).toBe('private');
  expect(parsePkcs11Uri('pkcs11:TYPE=Secret-Key').type).toBe('secret-key');
  expect(parsePkcs11Uri('Pkcs11:object=k').object).toBe('k');
});

test('slot-id is a decimal CK_ULONG: leading zeros, values above 2^32 and up to 2^64 - 1', () => {
  expect(parsePkcs11Uri('pkcs11:slot-id=0007').slotId).toBe(7n);
  expect(parsePkcs11Uri('pkcs11:slot-id=4294967296').slotId).toBe(4294967296n);
  expect(parsePkcs11Uri('pkcs11:slot-id=18446744073709551615').slotId).toBe(18446744073709551615n);
});

test('what the grammar allows unencoded is accepted: "&" in a path value, "/", "?" and "|" in a query value', () => {
  const uri = parsePkcs11Uri("pkcs11:token=R&D;object=a:b[c]@!$'()*+,=~?module-path=/opt/x?y.so&pin-source=|/usr/bin/get-pin");
  expect([uri.token, uri.object, uri.modulePath]).toEqual(['R&D', "a:b[c]@!$'()*+,=~", '/opt/x?y.so']);
  expect(uri.pinSource).toEqual({ kind: 'command', command: '/usr/bin/get-pin' });
});

test('vendor attributes follow pk11-v-attr-nm-char (letters, digits, "-", "_") in the path and the query', () => {
  const uri = parsePkcs11Uri('pkcs11:object=k;Vendor_A-1=x%20y?vendor_b=%2F');
  expect(uri.vendor).toEqual({ 'vendor_a-1': 'x y' });
  expect(uri.unknownQuery).toEqual({ vendor_b: '/' });
});

test('an unknown path attribute is kept apart (the backend matches nothing with it); an unknown query attribute is ignored', () => {
  const uri = parsePkcs11Uri('pkcs11:object=k;x-vendor=1;colour=blue?x-hint=%2B&pin-value=1');
  expect(uri.vendor).toEqual({ 'x-vendor': '1', colour: 'blue' });
  expect(uri.unknownQuery).toEqual({ 'x-hint': '+' });
  expect([uri.object, uri.pinValue]).toEqual(['k', '1']);
});

test('random URIs either parse or fail with a ConfigError (100,000 cases)', () => {
  const alphabet = fc.constantFrom(...'pkcs11:;?&=%+/|-_.abcdefghijklmnopqrstuvwxyz0123456789ABCDEF'.split(''), 'token', 'object', 'id', 'type', 'slot-id', 'library-version', 'module-path', 'pin-source', 'pin-value', 'file:', '%2', '%zz', 'é');
  const uris = fc.array(alphabet, { maxLength: 40 }).map((parts) => `pkcs11:${parts.join('')}`);
  fc.assert(
    fc.property(uris, (uri) => {
      try {
        parsePkcs11Uri(uri);
      } catch (err) {
        if (!(err instanceof ConfigError)) throw err;
      }
    }),
    { numRuns: 100_000 },
  );
});

test('the config schema takes the scheme in any case', () => {
  expect(pkcs11BackendSchema.parse({ type: 'pkcs11', uri: 'PKCS11:token=a?module-name=softhsm2' }).uri).toBe('PKCS11:token=a?module-name=softhsm2');
});
