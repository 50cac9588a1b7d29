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
  readonly slotId?: number;
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

export function parsePkcs11Uri(uri: string): Pkcs11Uri {
  // URI schemes are case-insensitive (RFC 3986 §3.1), as are RFC 7512's attribute names (ABNF strings).
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

  for (const item of pathPart === '' ? [] : pathPart.split(';')) {
    const eq = item.indexOf('=');
    if (eq <= 0) fail(item || '(empty)', 'path attributes are name=value pairs separated by ";"');
    const name = item.slice(0, eq).toLowerCase();
    const value = item.slice(eq + 1);
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
      const type = decodeText(value, 'type');
      if (!TYPES.has(type)) fail('type', `must be one of ${[...TYPES].join(', ')}, got "${type}"`);
      out.type = type;
    } else if (name === 'library-version') {
      out.libraryVersion = parseVersion(decodeText(value, name));
    } else if (name === 'slot-id') {
      const text = decodeText(value, name);
      if (!/^\d{1,10}$/.test(text) || Number(text) > 0xffffffff) fail('slot-id', `must be a non-negative whole number (CK_SLOT_ID), got "${text}"`);
      out.slotId = Number(text);
    } else {
      (out.vendor as Record<string, string>)[name] = decodeText(value, name);
    }
  }

  const seenQuery = new Set<string>();
  for (const item of queryPart === '' ? [] : queryPart.split('&')) {
    const eq = item.indexOf('=');
    if (eq <= 0) fail(item || '(empty)', 'query attributes are name=value pairs separated by "&"');
    const name = item.slice(0, eq).toLowerCase();
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
