/**
 * Client-supplied text on its way into the audit log or the logs: characters that could
 * forge or hide lines on a terminal or in a log viewer (C0/C1 controls, DEL, line and
 * paragraph separators, bidirectional overrides) are written as visible `\u{…}` escapes,
 * and the text is cut to `max` characters with a note of how much was cut, so a hostile
 * edge costs bounded bytes per record.
 */
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]/g;

export function boundedText(value: string, max: number): string {
  const cut = value.length > max ? value.slice(0, max) : value;
  const safe = cut.replace(UNSAFE, (c) => `\\u{${c.charCodeAt(0).toString(16)}}`);
  return value.length > max ? `${safe}…(+${value.length - max} chars)` : safe;
}

/** Limits for the client-supplied fields that reach the audit log (characters). */
export const FIELD_LIMITS = {
  /** A DNS name is at most 253 characters. */
  sni: 255,
  requestId: 128,
  keyName: 128,
  subject: 1024,
} as const;
