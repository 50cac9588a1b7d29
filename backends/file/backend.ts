import { readdir, readFile, stat } from 'node:fs/promises';
import { basename, extname, join } from 'node:path';
import { ConfigError } from '../../src/errors';
import type { Backend, KeyHandle, SkippedKey } from '../../src/keys/types';
import type { Logger } from '../../src/log';
import { FileKey } from './key';
import { parsePrivateKey } from './parse';
import type { FileBackendConfig } from './schema';

interface KeyFile {
  readonly path: string;
  readonly name: string;
  readonly passphraseFile?: string;
}

async function readPassphrase(path: string): Promise<string> {
  try {
    return (await readFile(path, 'utf8')).replace(/\r?\n$/, '');
  } catch (err) {
    throw new Error(`cannot read its passphrase file ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

/** Keys from PEM/DER files: a scanned directory and/or files listed one by one. */
export class FileBackend implements Backend {
  readonly kind = 'file' as const;
  readonly name: string;
  readonly timeoutMs: number;

  constructor(
    private readonly config: FileBackendConfig,
    private readonly logger: Logger,
  ) {
    this.name = config.name;
    this.timeoutMs = config.timeout_ms;
  }

  async open(): Promise<{ keys: KeyHandle[]; skipped: SkippedKey[] }> {
    const keys: KeyHandle[] = [];
    const skipped: SkippedKey[] = [];
    for (const file of await this.keyFiles()) {
      try {
        const passphrase = file.passphraseFile === undefined ? undefined : await readPassphrase(file.passphraseFile);
        const privateKey = parsePrivateKey(await readFile(file.path), passphrase);
        keys.push(new FileKey(file.name, this, privateKey));
      } catch (err) {
        // Parser messages describe the file ("is encrypted and ..."); the reason is a whole clause.
        const reason = `it ${(err as Error).message}`;
        skipped.push({ source: file.path, reason });
        this.logger.warn({ backend: this.name, file: file.path, reason }, `skipping key file ${file.path}: ${reason}`);
      }
    }
    return { keys, skipped };
  }

  healthy(): boolean {
    return true;
  }

  async close(): Promise<void> {}

  private async keyFiles(): Promise<KeyFile[]> {
    const listed: KeyFile[] = this.config.files.map((f) => ({
      path: f.path,
      name: f.name ?? basename(f.path, extname(f.path)),
      passphraseFile: f.passphrase_file,
    }));
    if (this.config.dir === undefined) return listed;
    const dir = this.config.dir;
    let entries: string[];
    try {
      entries = (await readdir(dir)).sort();
    } catch (err) {
      throw new ConfigError(`backends.${this.name}.dir`, `cannot read directory ${dir}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    const scanned: KeyFile[] = [];
    for (const entry of entries) {
      const path = join(dir, entry);
      if (entry.startsWith('.') || listed.some((f) => f.path === path) || !(await stat(path)).isFile()) continue;
      scanned.push({ path, name: basename(entry, extname(entry)), passphraseFile: this.config.passphrase_file });
    }
    return [...listed, ...scanned];
  }
}
