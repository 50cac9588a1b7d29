/** Text form of a 4- or 16-byte address from the wire; undefined for any other length. */
export function ipFromBytes(bytes: Uint8Array | null | undefined): string | undefined {
  if (!bytes || bytes.length === 0) return undefined;
  if (bytes.length === 4) return Array.from(bytes).join('.');
  if (bytes.length !== 16) return undefined;
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((bytes[i]! << 8) | bytes[i + 1]!).toString(16));
  return groups.join(':').replace(/\b(?:0(?::0\b)+)\b/, ':').replace(/^:(?!:)|(?<!:):$/, '::').replace(/:{3,}/, '::');
}
