import { ConfigError } from '../../src/errors';

/**
 * RFC 7512 PKCS#11 URIs, parsed by hand: `+` is a literal plus (not a space, as
 * URLSearchParams would have it) and `id` is raw bytes (decodeURIComponent would insist
 * on UTF-8). Pure: no I/O, so it can be fuzzed.
 */
export interface Pkcs11Uri {
  readonly token?: string;
  readonly manufacturer?: string;
  readonly serial?: string;
  readonly model?: string;
  readonly libraryManufacturer?: string;
  readonly libraryDescription?: string;
  readonly libraryVersion?: { readonly major: number; readonly minor: number };
  readonly object?: string;
  readonly type?: 'public' | 'private' | 'cert' | 'secret-key' | 'data';
  readonly id?: Buffer;
  readonly slotManufacturer?: string;
  readonly slotDescription?: string;
  /** CK_SLOT_ID is an unsigned long: 64 bits on the platforms keylessd runs on. */
  readonly slotId?: bigint;
  /** Path attributes this parser does not know (vendor attributes): a URI with any matches nothing. */
  readonly vendor: Readonly<Record<string, string>>;
  readonly pinSource?: { readonly kind: 'file'; readonly path: string } | { readonly kind: 'command'; readonly command: string };
  readonly pinValue?: string;
  readonly moduleName?: string;
  readonly modulePath?: string;
  /** Query attributes this parser does not know; ignored, kept for diagnostics. */
  readonly unknownQuery: Readonly<Record<string, string>>;
}

/**
 * CK_TOKEN_INFO / CK_SLOT_INFO / CK_INFO field sizes: a longer value can never match.
 * The token label (32 bytes in CK_TOKEN_INFO) is not checked here because RFC 7512's own
 * example `token=Name%20with%20a%20small%20A%20with%20acute:%20%C3%A1` is 34 bytes; such a
 * URI parses and the backend reports that no token can match it.
 */
const MAX_BYTES: Readonly<Record<string, number>> = {
  manufacturer: 32,
  model: 16,
  serial: 16,
  'library-manufacturer': 32,
  'library-description': 32,
  'slot-manufacturer': 32,
  'slot-description': 64,
};

const TEXT_ATTRIBUTES: Readonly<Record<string, keyof Pkcs11Uri>> = {
  token: 'token',
  manufacturer: 'manufacturer',
  serial: 'serial',
  model: 'model',
  'library-manufacturer': 'libraryManufacturer',
  'library-description': 'libraryDescription',
  object: 'object',
  'slot-manufacturer': 'slotManufacturer',
  'slot-description': 'slotDescription',
};

const TYPES = new Set(['public', 'private', 'cert', 'secret-key', 'data']);
const QUERY_ATTRIBUTES = new Set(['pin-source', 'pin-value', 'module-name', 'module-path']);

// RFC 7512 §2.3: what a value may hold unencoded, besides pk11-pct-encoded.
const UNRESERVED = 'A-Za-z0-9\\-._~';
const RES_AVAIL = ":\\[\\]@!$'()*+,=";
/** pk11-pchar: path values may hold "&" but not "/", "?" or ";". */
const PCHAR = new RegExp(`[^${UNRESERVED}${RES_AVAIL}&%]`);
/** pk11-qchar: query values may hold "/", "?" and "|" but not "&", ";" or "#". */
const QCHAR = new RegExp(`[^${UNRESERVED}${RES_AVAIL}/?|%]`);
/** pk11-v-attr-nm-char, which the standard names satisfy too. */
const NAME_CHAR = /[^A-Za-z0-9\-_]/;
const CK_ULONG_MAX = (1n << 64n) - 1n;

function fail(attribute: string, problem: string): never {
  throw new ConfigError(`pkcs11 URI attribute ${attribute}`, problem);
}

/** Percent-decodes to bytes; everything else (including '+') is taken literally. */
export function percentDecode(text: string, attribute: string): Buffer {
  const bytes: number[] = [];
  const raw = Buffer.from(text, 'utf8');
  for (let i = 0; i < raw.length; i++) {
    const byte = raw[i]!;
    if (byte !== 0x25) {
      bytes.push(byte);
      continue;
    }
    const hex = raw.subarray(i + 1, i + 3).toString('latin1');
    if (!/^[0-9a-fA-F]{2}$/.test(hex)) fail(attribute, attribute === 'pin-value' ? 'bad percent-escape' : `bad percent-escape "%${hex}"`);
    bytes.push(parseInt(hex, 16));
    i += 2;
  }
  return Buffer.from(bytes);
}

function decodeText(value: string, attribute: string): string {
  const bytes = percentDecode(value, attribute);
  const text = bytes.toString('utf8');
  if (!Buffer.from(text, 'utf8').equals(bytes)) fail(attribute, 'is not valid UTF-8 text');
  return text;
}

function parseVersion(value: string): { major: number; minor: number } {
  const match = /^(\d{1,3})(?:\.(\d{1,3}))?$/.exec(value);
  if (!match) fail('library-version', `expected M or M.N, got "${value}"`);
  const major = Number(match[1]);
  const minor = Number(match[2] ?? 0);
  if (major > 255 || minor > 255) fail('library-version', `version numbers are bytes (0-255), got "${value}"`);
  return { major, minor };
}

/**
 * Refuses a character the grammar does not allow unencoded, naming its position in the URI
 * (1-based). The character itself is not quoted for a pin-value.
 */
function checkChars(text: string, offset: number, disallowed: RegExp, attribute: string, what: string): void {
  const match = disallowed.exec(text);
  if (!match) return;
  const char = match[0];
  const code = char.codePointAt(0)!;
  const shown = attribute === 'pin-value' ? 'a character' : code < 0x21 || code > 0x7e ? `U+${code.toString(16).toUpperCase().padStart(4, '0')}` : `"${char}"`;
  const hint = attribute === 'pin-value' ? 'percent-encode it' : `write ${[...Buffer.from(char, 'utf8')].map((b) => `%${b.toString(16).toUpperCase().padStart(2, '0')}`).join('')}`;
  fail(attribute, `${shown} at position ${offset + match.index + 1} is not allowed unencoded in ${what} (RFC 7512 §2.3); ${hint}`);
}

export function parsePkcs11Uri(uri: string): Pkcs11Uri {
  // URI schemes are case-insensitive (RFC 3986 §3.1), as are RFC 7512's attribute names and
  // literal values such as type=PRIVATE (ABNF strings, RFC 5234 §2.3).
  if (uri.slice(0, 7).toLowerCase() !== 'pkcs11:') {
    // Only the scheme is quoted: the rest may hold a pin-value.
    const scheme = /^[A-Za-z][A-Za-z0-9+.-]{0,19}:/.exec(uri)?.[0];
    throw new ConfigError('pkcs11 URI', scheme ? `must start with "pkcs11:", not "${scheme}"` : 'must start with "pkcs11:"');
  }
  const rest = uri.slice('pkcs11:'.length);
  const question = rest.indexOf('?');
  const pathPart = question === -1 ? rest : rest.slice(0, question);
  const queryPart = question === -1 ? '' : rest.slice(question + 1);
  const out: Record<string, unknown> = { vendor: {}, unknownQuery: {} };
  const seen = new Set<string>();

  let offset = 'pkcs11:'.length;
  for (const item of pathPart === '' ? [] : pathPart.split(';')) {
    const at = offset;
    offset += item.length + 1;
    const eq = item.indexOf('=');
    if (eq <= 0) fail(item || '(empty)', 'path attributes are name=value pairs separated by ";"');
    checkChars(item.slice(0, eq), at, NAME_CHAR, 'the path', 'an attribute name');
    const name = item.slice(0, eq).toLowerCase();
    const value = item.slice(eq + 1);
    if (QUERY_ATTRIBUTES.has(name)) fail(name, 'is a query attribute: put it after "?" (pkcs11:token=...?' + name + '=...)');
    checkChars(value, at + eq + 1, PCHAR, name, 'a path attribute value');
    if (seen.has(name)) fail(name, 'appears twice');
    seen.add(name);
    const max = MAX_BYTES[name];
    if (name in TEXT_ATTRIBUTES) {
      const text = decodeText(value, name);
      if (max !== undefined && Buffer.byteLength(text) > max) fail(name, `is ${Buffer.byteLength(text)} bytes; PKCS#11 allows at most ${max}`);
      out[TEXT_ATTRIBUTES[name]!] = text;
    } else if (name === 'id') {
      out.id = percentDecode(value, 'id');
    } else if (name === 'type') {
      const type = decodeText(value, 'type').toLowerCase();
      if (!TYPES.has(type)) fail('type', `must be one of ${[...TYPES].join(', ')}, got "${type}"`);
      out.type = type;
    } else if (name === 'library-version') {
      out.libraryVersion = parseVersion(decodeText(value, name));
    } else if (name === 'slot-id') {
      const text = decodeText(value, name);
      // 1*DIGIT: decimal, leading zeros allowed, up to the largest CK_ULONG.
      if (!/^\d+$/.test(text)) fail('slot-id', `must be a decimal CK_SLOT_ID (digits only), got "${text}"`);
      const slotId = BigInt(text);
      if (slotId > CK_ULONG_MAX) fail('slot-id', `is larger than a CK_SLOT_ID can be (2^64 - 1), got "${text}"`);
      out.slotId = slotId;
    } else {
      (out.vendor as Record<string, string>)[name] = decodeText(value, name);
    }
  }

  const seenQuery = new Set<string>();
  offset = 'pkcs11:'.length + pathPart.length + 1;
  for (const item of queryPart === '' ? [] : queryPart.split('&')) {
    const at = offset;
    offset += item.length + 1;
    const eq = item.indexOf('=');
    // The item itself is not quoted: it may be a PIN typed without its name.
    if (eq <= 0) fail('the query', `the item at position ${at + 1} is not a name=value pair (query attributes are separated by "&")`);
    checkChars(item.slice(0, eq), at, NAME_CHAR, 'the query', 'an attribute name');
    const name = item.slice(0, eq).toLowerCase();
    checkChars(item.slice(eq + 1), at + eq + 1, QCHAR, name, 'a query attribute value');
    const value = decodeText(item.slice(eq + 1), name);
    if (seenQuery.has(name) && ['pin-source', 'pin-value', 'module-name', 'module-path'].includes(name)) fail(name, 'appears twice');
    seenQuery.add(name);
    switch (name) {
      case 'pin-source':
        if (value.startsWith('|')) {
          if (!value.slice(1).startsWith('/')) fail('pin-source', 'a command must be an absolute path: "|/path/to/command"');
          out.pinSource = { kind: 'command', command: value.slice(1) };
        } else {
          const path = value.startsWith('file:') ? value.slice('file:'.length) : value;
          if (!path.startsWith('/')) fail('pin-source', 'must be file:/absolute/path or |/absolute/command');
          out.pinSource = { kind: 'file', path };
        }
        break;
      case 'pin-value':
        out.pinValue = value;
        break;
      case 'module-name':
        // RFC 7512 §2.3: the module's name without path, "lib" prefix or suffix (mypkcs11 for libmypkcs11.so.1).
        if (value === '' || value.includes('/')) fail('module-name', `is a module's name without path, "lib" prefix or suffix (module-name=softhsm2 for libsofthsm2.so), got "${value}"`);
        out.moduleName = value;
        break;
      case 'module-path':
        if (!value.startsWith('/')) fail('module-path', `must be an absolute path, got "${value}"`);
        out.modulePath = value;
        break;
      default:
        (out.unknownQuery as Record<string, string>)[name] = value;
    }
  }
  if (out.pinSource !== undefined && out.pinValue !== undefined) fail('pin-value', 'cannot be given together with pin-source');
  return out as unknown as Pkcs11Uri;
}
