import { join } from 'node:path';
import { ErrorByte } from '../../src/protocols/compat/codec';
import { ERROR_BYTE } from '../../src/protocols/compat/request';
import { ResponseTimeoutError } from '../../src/client/errors';
import { ConfigError, ERROR_CODES, InternalError, KeylessdError, KeylessError, TimeoutError, type ErrorCode } from '../../src/errors';
import { V1_ERROR_CODE, errorCodeName, pb } from '../../src/protocols/v1/codec';
import { ROOT, read, sourceFiles } from './sources';

type ErrorClass = new (...args: unknown[]) => Error;

/** Every exported class in src/ and backends/ that is an Error, found by reading the sources and loading their modules. */
function exportedErrorClasses(): Array<{ file: string; name: string; cls: ErrorClass }> {
  const found: Array<{ file: string; name: string; cls: ErrorClass }> = [];
  for (const file of sourceFiles('src', 'backends')) {
    const names = [...read(file).matchAll(/^export (?:abstract )?class (\w+) extends \w+/gm)].map((m) => m[1]!);
    if (names.length === 0) continue;
    // Only modules that declare classes are loaded, and no entry point declares one.
    const loaded = require(join(ROOT, file)) as Record<string, unknown>;
    for (const name of names) {
      const value = loaded[name];
      if (typeof value === 'function' && value.prototype instanceof Error) found.push({ file, name, cls: value as ErrorClass });
    }
  }
  return found;
}

const classes = exportedErrorClasses();
// Arguments every constructor accepts: (code | message | field, message | problem | reason, message).
const instance = (cls: ErrorClass) => new cls('INTERNAL', 'a message', 'a message');

test('the walk finds the error classes of every part of the project', () => {
  const names = classes.map((c) => c.name);
  for (const expected of ['KeylessdError', 'InstallationError', 'KeyFileError', 'AuditFileError', 'Pkcs11CallError', 'KeylessError', 'ConfigError', 'RemoteError', 'ResponseTimeoutError', 'ConnectionError', 'PoolBusyError', 'CompatFormatError', 'UsageError', 'CheckFailedError', 'WrongProtocolError', 'PkiError', 'FrameError']) {
    expect(names).toContain(expected);
  }
});

test('no class outside the root extends Error directly: everything the project throws on purpose is a KeylessdError', () => {
  const direct = sourceFiles('src', 'backends').flatMap((file) => [...read(file).matchAll(/class (\w+) extends Error\b/g)].map((m) => `${file}: ${m[1]}`));
  expect(direct).toEqual(['src/errors.ts: KeylessdError']);
});

test('no file makes a plain Error: what the project throws or rejects with comes from the hierarchy', () => {
  const plain = sourceFiles('src', 'backends').flatMap((file) =>
    read(file)
      .split('\n')
      .map((line, i) => ({ line, at: `${file}:${i + 1}` }))
      .filter(({ line }) => /new (Error|TypeError|RangeError)\(/.test(line))
      .map(({ at }) => at),
  );
  expect(plain).toEqual([]);
});

test('every exported error class is a KeylessdError with its own distinct name and a stable code', () => {
  const seen = new Map<string, string>();
  for (const { file, name, cls } of classes) {
    if (cls === (KeylessdError as unknown)) continue; // abstract root
    expect(cls.prototype).toBeInstanceOf(KeylessdError);
    const error = instance(cls);
    expect({ file, name: error.name }).toEqual({ file, name });
    expect(seen.get(error.name)).toBeUndefined();
    seen.set(error.name, file);
    const code = (error as KeylessdError).code;
    expect(typeof code).toBe('string');
    expect(code).toMatch(/^[A-Z][A-Z0-9_]+$/);
    // Wire codes belong to request failures only; an edge's own failure cannot pass for one.
    if (error instanceof KeylessError) expect(ERROR_CODES).toContain(code);
    else expect(ERROR_CODES).not.toContain(code);
  }
  expect(seen.size).toBeGreaterThanOrEqual(20);
});

test('an error that wraps another keeps it as cause', () => {
  const inner = new Error('the module said no');
  expect(new InternalError('internal error', { cause: inner }).cause).toBe(inner);
  expect(new ConfigError('backends[0].module', 'cannot load', { cause: inner }).cause).toBe(inner);
  expect(new InternalError().cause).toBeUndefined();
  expect('cause' in new InternalError()).toBe(false);
});

test("the client's own no-answer timeout is named apart from the server's TimeoutError but is still a TIMEOUT", () => {
  const error = new ResponseTimeoutError('no answer to request 1 within 10 ms');
  expect(error.name).toBe('ResponseTimeoutError');
  expect(new TimeoutError('x').name).toBe('TimeoutError');
  expect(error).toBeInstanceOf(TimeoutError);
  expect(error.code).toBe('TIMEOUT');
});

test('every KeylessError code maps to a wire code in both protocol tables', () => {
  const codes = new Set<ErrorCode>(ERROR_CODES);
  for (const { cls } of classes) {
    const error = cls === (KeylessdError as unknown) ? undefined : instance(cls);
    if (error instanceof KeylessError) codes.add(error.code);
  }
  const wireV1 = new Set<number>();
  const errorBytes = new Set<number>(Object.values(ErrorByte));
  for (const code of codes) {
    // keyless.v1: a distinct ErrorCode enum value of the same name, and back.
    const wire = V1_ERROR_CODE[code];
    expect({ code, wire }).toEqual({ code, wire: pb.ErrorCode[code] });
    expect(wireV1.has(wire)).toBe(false);
    wireV1.add(wire);
    expect(errorCodeName(wire)).toBe(code);
    // compat: one of the protocol's error bytes.
    expect({ code, known: errorBytes.has(ERROR_BYTE[code]) }).toEqual({ code, known: true });
  }
  expect(Object.keys(V1_ERROR_CODE).sort()).toEqual([...ERROR_CODES].sort());
  expect(Object.keys(ERROR_BYTE).sort()).toEqual([...ERROR_CODES].sort());
  expect(errorCodeName(0)).toBe('ERROR_CODE_UNSPECIFIED');
  expect(errorCodeName(99)).toBe('ERROR_CODE_UNSPECIFIED');
});

test('a refusal carries no stack, a fault does, and the stack limit is left as it was', () => {
  const limit = Error.stackTraceLimit;
  const frames = (error: Error) => (error.stack ?? '').split('\n').filter((line) => line.trimStart().startsWith('at ')).length;
  for (const code of ['BAD_REQUEST', 'KEY_NOT_FOUND', 'FORBIDDEN', 'UNSUPPORTED', 'OVERLOADED', 'TIMEOUT'] as const) {
    const refusal = new KeylessError(code, 'refused');
    expect({ code, stack: refusal.stack }).toEqual({ code, stack: 'KeylessError: refused' });
  }
  expect(new TimeoutError('no slot').stack).toBe('TimeoutError: no slot');
  expect(new ResponseTimeoutError('no answer').stack).toBe('ResponseTimeoutError: no answer');
  for (const code of ['CRYPTO_FAILURE', 'BACKEND_UNAVAILABLE', 'INTERNAL'] as const) expect({ code, frames: frames(new KeylessError(code, 'fault')) > 0 }).toEqual({ code, frames: true });
  expect(frames(new InternalError())).toBeGreaterThan(0);
  expect(frames(new ConfigError('listen.port', 'must be a number'))).toBeGreaterThan(0);
  expect(Error.stackTraceLimit).toBe(limit);
});
