import { dirname, join, normalize, relative } from 'node:path';
import { ROOT, read, sourceFiles } from './sources';

/**
 * The rooms of the codebase and who may import whom (docs/architecture.md, "Rooms").
 * The core (request model, dispatch, keys, policy, crypto) speaks one neutral request and key
 * model: it imports no protocol, no transport and no backend. Each protocol maps itself onto the
 * core and knows nothing of the other. Backends serve the core and know no protocol. Only the
 * daemon (the composition root) and the CLI put the rooms together.
 */
const FOUNDATIONS = ['errors', 'log', 'util', 'metrics', 'gen'];
const MAY_IMPORT: Record<string, readonly string[]> = {
  errors: [],
  log: [],
  util: ['errors', 'log'],
  gen: [],
  metrics: ['errors', 'log', 'util', 'transport'],
  core: [...FOUNDATIONS, 'audit'],
  audit: FOUNDATIONS,
  backends: [...FOUNDATIONS, 'core', 'config'],
  transport: [...FOUNDATIONS, 'core'],
  'protocols/v1': [...FOUNDATIONS, 'core', 'transport'],
  'protocols/compat': [...FOUNDATIONS, 'core', 'transport'],
  client: [...FOUNDATIONS, 'core', 'protocols/v1', 'protocols/compat'],
  edge: [...FOUNDATIONS, 'core', 'protocols/v1', 'client'],
  config: [...FOUNDATIONS, 'core', 'audit', 'backends'],
  pki: FOUNDATIONS,
  bench: [...FOUNDATIONS, 'core', 'protocols/v1', 'client'],
  daemon: [...FOUNDATIONS, 'core', 'audit', 'backends', 'transport', 'protocols/v1', 'protocols/compat', 'config', 'pki'],
  cli: [...FOUNDATIONS, 'core', 'audit', 'backends', 'transport', 'protocols/v1', 'protocols/compat', 'config', 'pki', 'client', 'edge', 'bench', 'daemon'],
  index: [...FOUNDATIONS, 'core', 'client'],
};

/** The room a source file lives in: `backends`, `protocols/v1`, `core`, `errors` (src/errors.ts)… */
function roomOf(file: string): string {
  const parts = file.split('/');
  if (parts[0] === 'backends') return 'backends';
  if (parts[1] === 'protocols') return `protocols/${parts[2]}`;
  return parts.length === 2 ? parts[1]!.replace(/\.ts$/, '') : parts[1]!;
}

function imports(file: string): string[] {
  const specifiers = [...read(file).matchAll(/(?:^|\n)\s*(?:import|export)[^'"]*?from\s+'([^']+)'|require\('([^']+)'\)|import\('([^']+)'\)/g)].map((m) => m[1] ?? m[2] ?? m[3]!);
  return specifiers.filter((s) => s.startsWith('.')).map((s) => relative(ROOT, normalize(join(ROOT, dirname(file), s))).replace(/\\/g, '/'));
}

/** The imports of `file` that its room may not make, as readable lines. */
function breachesOf(file: string, targets: readonly string[]): string[] {
  const from = roomOf(file);
  return targets
    .map((target) => ({ target, to: roomOf(target) }))
    .filter(({ to }) => to !== from && !MAY_IMPORT[from]!.includes(to))
    .map(({ target, to }) => `${file} (${from}) imports ${target} (${to})`);
}

const SOURCES = sourceFiles('src', 'backends');

test('every source file lives in a known room', () => {
  const homeless = SOURCES.filter((file) => !(roomOf(file) in MAY_IMPORT));
  expect(homeless).toEqual([]);
});

test('each room imports only the rooms it may (nothing in the core imports a protocol, the transport or a backend)', () => {
  expect(SOURCES.length).toBeGreaterThan(80);
  expect(SOURCES.flatMap((file) => breachesOf(file, imports(file)))).toEqual([]);
});

test('the rule has teeth: the imports it must refuse are breaches', () => {
  expect(breachesOf('src/core/keys/registry.ts', ['src/protocols/compat/key-index', 'src/core/crypto/keyid'])).toEqual([
    'src/core/keys/registry.ts (core) imports src/protocols/compat/key-index (protocols/compat)',
  ]);
  expect(breachesOf('src/protocols/v1/session.ts', ['src/protocols/compat/codec'])).toHaveLength(1);
  expect(breachesOf('backends/pkcs11/backend.ts', ['src/protocols/v1/codec', 'src/daemon/index'])).toHaveLength(2);
  expect(breachesOf('src/client/pool.ts', ['src/transport/tls', 'backends/file/index'])).toHaveLength(2);
});

test('the WebSocket subprotocol keyless.v1 is spelled out once, in the protocol', () => {
  const definitions = sourceFiles('src').filter((file) => /SUBPROTOCOL\s*=/.test(read(file)));
  expect(definitions).toEqual(['src/protocols/v1/codec.ts']);
});

test('the CLI owns no compat protocol tables: opcodes and error bytes come from src/protocols/compat', () => {
  for (const file of sourceFiles('src/cli')) {
    const text = read(file);
    expect({ file, table: /:\s*0x(0[2-9]|1[2-8]|3[5-7]),/.test(text) }).toEqual({ file, table: false });
    expect({ file, table: /'(cryptography failure|version mismatch|unexpected opcode)'/.test(text) }).toEqual({ file, table: false });
  }
});
