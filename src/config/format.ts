import type { z } from 'zod';

/** Config fields whose values must never be echoed back in an error message. */
const SECRET_FIELD = /pin|pass|secret|token|uri/i;

/** `backends[0]` becomes `backends.hsm` when that entry names itself: operators know their backends by name. */
function nameBackend(path: readonly PropertyKey[], input: unknown): readonly PropertyKey[] {
  if (path[0] !== 'backends' || typeof path[1] !== 'number') return path;
  const name = (input as { backends?: Array<{ name?: unknown }> } | undefined)?.backends?.[path[1]]?.name;
  return typeof name === 'string' && /^[\w.-]+$/.test(name) ? ['backends', name, ...path.slice(2)] : path;
}

function formatPath(path: readonly PropertyKey[]): string {
  return path.reduce<string>((out, part) => (typeof part === 'number' ? `${out}[${part}]` : out ? `${out}.${String(part)}` : String(part)), '');
}

function describeValue(value: unknown): string {
  if (value === undefined) return 'nothing';
  const text = JSON.stringify(value);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

/**
 * One line per problem, each naming the field: `listen.port: expected a number between
 * 1 and 65535, got "abc"`. Values of secret-looking fields are never shown.
 */
export function formatConfigIssues(error: z.ZodError, prefix = '', raw?: unknown): string[] {
  return error.issues.map((issue) => {
    const path = formatPath([...(prefix ? [prefix] : []), ...nameBackend(issue.path, raw)]);
    const field = path || '(top level)';
    if (issue.code === 'unrecognized_keys') {
      return `${field}: unknown field${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => `"${k}"`).join(', ')}`;
    }
    const input = (issue as { input?: unknown }).input;
    const message = issue.message.replace(/^Invalid input: /, '');
    if (input === undefined && issue.code === 'invalid_type') return `${field}: required (${message})`;
    const shown = SECRET_FIELD.test(path) ? '' : `, got ${describeValue(input)}`;
    return `${field}: ${message}${shown}`;
  });
}
