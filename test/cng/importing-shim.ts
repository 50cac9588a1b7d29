/**
 * keyless-cng-shim.exe under Wine, with test keys already in it: what a keylessd daemon
 * configured with a `cng` backend spawns in the end-to-end test (daemon.test.ts), since
 * Wine cannot open persisted keys and keylessd itself never imports any.
 *
 * Usage: importing-shim.ts KEY_DIR [shim arguments...]. Starts `wine keyless-cng-shim.exe
 * --allow-test-import [shim arguments...]`, imports every KEY_DIR/<name>.pem under <name>,
 * then passes bytes through untouched: keylessd's frames in, the shim's answers out, its
 * stderr log straight through. keylessd's first frames wait in the stdin pipe meanwhile.
 * A failed import exits 1 naming the key, which keylessd reports as a shim that did not start.
 */
import { spawn } from 'node:child_process';
import { createPrivateKey } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { defaultShimPath } from '../../backends/cng';
import { CngHash, CngOperation, CngPadding, CngStatus, decodeResponse, encodeRequest, FrameReader } from '../../backends/cng/codec';
import { privateBlob } from './blobs';

/** Far above the ids keylessd uses first (1, 2, ...), which are not sent until the imports are done. */
const FIRST_IMPORT_ID = 0xffff0000;

const [keyDir, ...shimArgs] = process.argv.slice(2);
const files = readdirSync(keyDir!).filter((file) => file.endsWith('.pem'));
const child = spawn('wine', [defaultShimPath(), '--allow-test-import', ...shimArgs], { stdio: ['pipe', 'pipe', 'inherit'] });
child.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
child.stdin.on('error', () => undefined);

const waiting = new Map<number, string>();
files.forEach((file, i) => {
  const name = basename(file, '.pem');
  const id = FIRST_IMPORT_ID + i;
  waiting.set(id, name);
  const payload = privateBlob(createPrivateKey(readFileSync(join(keyDir!, file))));
  child.stdin.write(encodeRequest({ id, operation: CngOperation.import, keyName: name, machine: false, padding: CngPadding.none, hash: CngHash.none, payload }));
});

const reader = new FrameReader();
function importAnswers(chunk: Buffer): void {
  for (const body of reader.push(chunk)) {
    const response = decodeResponse(body);
    const name = waiting.get(response.id);
    if (response.status !== CngStatus.ok) {
      process.stderr.write(`importing-shim: importing test key "${name}" failed: status ${response.status}\n`);
      process.exit(1);
    }
    waiting.delete(response.id);
  }
  if (waiting.size === 0) passThrough();
}

function passThrough(): void {
  child.stdout.off('data', importAnswers);
  child.stdout.pipe(process.stdout);
  process.stdin.pipe(child.stdin);
}

child.stdout.on('data', importAnswers);
if (files.length === 0) passThrough();
