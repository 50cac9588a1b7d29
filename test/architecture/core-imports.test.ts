import { dirname, join, normalize, relative } from 'node:path';
import { ROOT, read, sourceFiles } from './sources';

/**
 * The core (keys, policy, audit, dispatch, the request and error models) speaks one neutral
 * request and key model: it imports no protocol (src/protocol, src/compat) and no backend.
 * Each protocol maps itself onto the core and registers its own key-lookup indexes.
 */
const CORE = [
  // src/keys/backends.ts is the factory that turns config into backends: composition, like src/key-set.ts.
  ...sourceFiles('src/keys', 'src/policy', 'src/audit', 'src/crypto').filter((file) => file !== 'src/keys/backends.ts'),
  'src/errors.ts',
  'src/server/dispatcher.ts',
  'src/server/session-info.ts',
];
const FORBIDDEN = ['src/protocol/', 'src/compat/', 'backends/', 'src/cli/'];

function imports(file: string): string[] {
  const specifiers = [...read(file).matchAll(/(?:^|\n)\s*(?:import|export)[^'"]*?from\s+'([^']+)'|require\('([^']+)'\)|import\('([^']+)'\)/g)].map((m) => m[1] ?? m[2] ?? m[3]!);
  return specifiers.filter((s) => s.startsWith('.')).map((s) => relative(ROOT, normalize(join(ROOT, dirname(file), s))).replace(/\\/g, '/'));
}

test('nothing in the core imports a protocol, a backend or the CLI', () => {
  expect(CORE.length).toBeGreaterThan(10);
  const breaches = CORE.flatMap((file) => imports(file).filter((target) => FORBIDDEN.some((prefix) => `${target}/`.startsWith(prefix) || target.startsWith(prefix))).map((target) => `${file} imports ${target}`));
  expect(breaches).toEqual([]);
});

test('the WebSocket subprotocol keyless.v1 is spelled out once, in the protocol', () => {
  const definitions = sourceFiles('src').filter((file) => /SUBPROTOCOL\s*=/.test(read(file)));
  expect(definitions).toEqual(['src/protocol/v1.ts']);
});

test('the CLI owns no compat protocol tables: opcodes and error bytes come from src/compat', () => {
  for (const file of sourceFiles('src/cli')) {
    const text = read(file);
    expect({ file, table: /:\s*0x(0[2-9]|1[2-8]|3[5-7]),/.test(text) }).toEqual({ file, table: false });
    expect({ file, table: /'(cryptography failure|version mismatch|unexpected opcode)'/.test(text) }).toEqual({ file, table: false });
  }
});
