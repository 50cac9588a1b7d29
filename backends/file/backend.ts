import { lstat, readdir, readFile, readlink, stat } from 'node:fs/promises';
import { basename, extname, join } from 'node:path';
import { exposure } from '../../src/config/file-mode';
import { ConfigError } from '../../src/errors';
import type { Backend, KeyHandle, SkippedKey } from '../../src/core/keys/types';
import type { Logger } from '../../src/log';
import { BackendLifecycle, NEVER_DOWN } from '../lifecycle';
import { FileKey } from './key';
import { KeyFileError, parsePrivateKey } from './parse';
import type { FileBackendConfig } from './schema';

interface KeyFile {
  readonly path: string;
  readonly name: string;
  readonly passphraseFile?: string;
  /** Config field of a file listed in `files:` (absent for one found by the directory scan). */
  readonly field?: string;
}

const errorCode = (err: unknown) => (err as NodeJS.ErrnoException).code ?? (err as Error).message;

async function readPassphrase(path: string): Promise<string> {
  try {
    return (await readFile(path, 'utf8')).replace(/\r?\n$/, '');
  } catch (err) {
    throw new KeyFileError(`cannot read its passphrase file ${path}: ${errorCode(err)}`, { cause: err });
  }
}

/** Keys from PEM/DER files: a scanned directory and/or files listed one by one. */
export class FileBackend implements Backend {
  readonly kind = 'file' as const;
  readonly name: string;
  readonly timeoutMs: number;
  /** Keys in memory never go down: starting, ready once opened, closed. */
  private readonly life = new BackendLifecycle(NEVER_DOWN);

  constructor(
    private readonly config: FileBackendConfig,
    private readonly logger: Logger,
  ) {
    this.name = config.name;
    this.timeoutMs = config.timeout_ms;
  }

  async open(): Promise<{ keys: KeyHandle[]; skipped: SkippedKey[] }> {
    this.life.opening();
    const keys: KeyHandle[] = [];
    const skipped: SkippedKey[] = [];
    const skip = (path: string, reason: string) => {
      skipped.push({ source: path, reason });
      this.logger.warn({ file: path, reason }, `skipping key file ${path}: ${reason}`);
    };
    const warned = new Set<string>();
    const warnIfExposed = (path: string, what: string) => {
      const problem = warned.has(path) ? undefined : exposure(path);
      if (!problem) return;
      warned.add(path);
      this.logger.warn({ file: path }, `${what} ${problem}`);
    };
    const { files, unusable } = await this.keyFiles();
    for (const { path, reason } of unusable) skip(path, reason);
    for (const file of files) {
      let bytes: Buffer;
      try {
        bytes = await readFile(file.path);
      } catch (err) {
        // A file the operator listed by name must be there; one found by the scan is skipped.
        if (file.field) throw new ConfigError(file.field, `cannot read the key file ${file.path}: ${errorCode(err)}`, { cause: err });
        skip(file.path, `it cannot be read: ${errorCode(err)}`);
        continue;
      }
      warnIfExposed(file.path, 'key file');
      try {
        if (file.passphraseFile !== undefined) warnIfExposed(file.passphraseFile, 'passphrase file');
        const passphrase = file.passphraseFile === undefined ? undefined : await readPassphrase(file.passphraseFile);
        const privateKey = parsePrivateKey(bytes, passphrase);
        keys.push(new FileKey(file.name, this, privateKey));
      } catch (err) {
        // Parser messages describe the file ("is encrypted and ..."); the reason is a whole clause.
        skip(file.path, `it ${(err as Error).message}`);
      }
    }
    this.life.opened();
    return { keys, skipped };
  }

  healthy(): boolean {
    return this.life.healthy;
  }

  async close(): Promise<void> {
    this.life.close();
  }

  private async keyFiles(): Promise<{ files: KeyFile[]; unusable: Array<{ path: string; reason: string }> }> {
    const listed: KeyFile[] = this.config.files.map((f, i) => ({
      path: f.path,
      name: f.name ?? basename(f.path, extname(f.path)),
      passphraseFile: f.passphrase_file,
      field: `backends.${this.name}.files[${i}].path`,
    }));
    if (this.config.dir === undefined) return { files: listed, unusable: [] };
    const dir = this.config.dir;
    let entries: string[];
    try {
      entries = (await readdir(dir)).sort();
    } catch (err) {
      throw new ConfigError(`backends.${this.name}.dir`, `cannot read directory ${dir}: ${errorCode(err)}`, { cause: err });
    }
    const scanned: KeyFile[] = [];
    const unusable: Array<{ path: string; reason: string }> = [];
    for (const entry of entries) {
      const path = join(dir, entry);
      if (entry.startsWith('.') || listed.some((f) => f.path === path)) continue;
      let isFile: boolean;
      try {
        isFile = (await stat(path)).isFile();
      } catch (err) {
        // A symbolic link to nowhere or in a loop: skip it, naming it, and serve the rest.
        const code = (err as NodeJS.ErrnoException).code;
        const link = await lstat(path).then((st) => st.isSymbolicLink(), () => false);
        if (!link) unusable.push({ path, reason: `it cannot be read: ${errorCode(err)}` });
        else if (code === 'ELOOP') unusable.push({ path, reason: 'it is a symbolic link loop (ELOOP)' });
        else unusable.push({ path, reason: `it is a symbolic link to ${await readlink(path).catch(() => '?')}, which cannot be opened (${code})` });
        continue;
      }
      if (!isFile) continue;
      scanned.push({ path, name: basename(entry, extname(entry)), passphraseFile: this.config.passphrase_file });
    }
    return { files: [...listed, ...scanned], unusable };
  }
}

/** The factory the daemon's backend registry calls. */
export function createFileBackend(config: FileBackendConfig, logger: Logger): Backend {
  return new FileBackend(config, logger);
}
