/** One Dockerfile instruction, continuation lines joined, comments dropped. */
export interface Instruction {
  readonly keyword: string;
  readonly args: string;
}

export interface Stage {
  readonly from: string;
  readonly name?: string;
  readonly instructions: Instruction[];
}

export function parseDockerfile(text: string): Stage[] {
  const logical = text
    .split('\n')
    .filter((line) => !/^\s*#/.test(line))
    .join('\n')
    .replace(/\\\n/g, ' ')
    .split('\n')
    .map((line) => line.trim())
    .filter(Boolean);
  const stages: Stage[] = [];
  for (const line of logical) {
    const [, keyword, args] = /^(\S+)\s*(.*)$/.exec(line)!;
    const instruction = { keyword: keyword!.toUpperCase(), args: args!.replace(/\s+/g, ' ').trim() };
    if (instruction.keyword === 'FROM') {
      const [from, as, name] = instruction.args.split(' ');
      stages.push({ from: from!, name: as?.toUpperCase() === 'AS' ? name : undefined, instructions: [] });
    } else {
      stages[stages.length - 1]!.instructions.push(instruction);
    }
  }
  return stages;
}

function globToRegex(pattern: string): RegExp {
  const body = pattern
    .split(/(\*\*|\*|\?)/)
    .map((part) => (part === '**' ? '.*' : part === '*' ? '[^/]*' : part === '?' ? '[^/]' : part.replace(/[.+^${}()|[\]\\]/g, '\\$&')))
    .join('');
  return new RegExp(`^${body}(/.*)?$`);
}

/** Whether a .dockerignore pattern keeps `path` (relative to the context) out of the build context. */
export function ignoredBy(patterns: readonly string[], path: string): boolean {
  const normalized = path.replace(/^\.\//, '').replace(/\/$/, '');
  return patterns.some((pattern) => globToRegex(pattern).test(normalized));
}

export function dockerignorePatterns(text: string): string[] {
  return text
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line && !line.startsWith('#'));
}

/**
 * The context paths a stage COPYs before its first RUN that matches `run` (what that RUN can
 * see): `COPY a b ./` gives a and b; copies from another stage are left out.
 */
export function copiedBefore(stage: Stage, run: RegExp): string[] {
  const at = stage.instructions.findIndex((i) => i.keyword === 'RUN' && run.test(i.args));
  return stage.instructions
    .slice(0, at < 0 ? undefined : at)
    .filter((i) => i.keyword === 'COPY' && !i.args.startsWith('--from'))
    .flatMap((i) => i.args.split(' ').slice(0, -1));
}

/** Whether `path` is one of `copied` or inside one of them. */
export function coveredBy(copied: readonly string[], path: string): boolean {
  return copied.some((c) => path === c || path.startsWith(`${c.replace(/\/$/, '')}/`));
}
