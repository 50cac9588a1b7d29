/**
 * Glob patterns for certificate facts. `*` is the only special character: in a DNS
 * pattern it matches within one label (`*.eu.example` matches `fra.eu.example`, not
 * `a.fra.eu.example`); elsewhere it matches any run of characters. Everything else is
 * literal, so `a.b` never matches `axb`. Matching is case-insensitive.
 */
export type Matcher = (value: string) => boolean;

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
}

export function compilePattern(pattern: string, kind: 'dns' | 'text'): Matcher {
  if (!pattern.includes('*')) {
    const exact = pattern.toLowerCase();
    return (value) => value.toLowerCase() === exact;
  }
  const star = kind === 'dns' ? '[^.]*' : '.*';
  const regex = new RegExp(`^${pattern.split('*').map(escapeRegExp).join(star)}$`, 'i');
  return (value) => regex.test(value);
}

export function anyMatch(matchers: readonly Matcher[], values: readonly string[]): boolean {
  return matchers.some((match) => values.some(match));
}
