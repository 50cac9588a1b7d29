// Run as a child process by file-backend-lazy.test.ts (through test/cng/ts-register.js): a
// daemon with one file backend serves a signature, then reports which backend modules the
// process has loaded; then, as the control, which it loads once a PKCS#11 backend is made.
import { generateKeyPairSync } from 'node:crypto';
import { pkcs11BackendSchema } from '../../backends/pkcs11/schema';
import { createBackend } from '../../src/daemon/backends';
import { createLogger } from '../../src/log';
import { startDaemon, writeKeyDir } from '../helpers/daemon';

const BACKEND_MODULES = /[\\/](node_modules[\\/]pkcs11js|backends[\\/]pkcs11[\\/](backend|module|key|session-pool|token-objects)|backends[\\/]cng[\\/](backend|shim-process|key))\b/;
const loaded = () => Object.keys(require.cache).filter((path) => BACKEND_MODULES.test(path)).map((path) => path.slice(path.lastIndexOf('node_modules') >= 0 ? path.lastIndexOf('node_modules') : path.lastIndexOf('backends')));

async function main(): Promise<void> {
  const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
  const server = await startDaemon({ backends: [{ type: 'file', dir: writeKeyDir([{ name: 'k', key }]) }] });
  const session = await server.connect();
  const signature = await session.sign({ name: 'k' }, 'ECDSA_SHA256', { message: Buffer.from('lazy') });
  await session.close();
  const fileOnly = loaded();
  await server.stop();
  const pkcs11 = pkcs11BackendSchema.parse({ type: 'pkcs11', uri: 'pkcs11:token=absent?module-path=/nonexistent/module.so' });
  createBackend(pkcs11, createLogger('silent'));
  process.stdout.write(JSON.stringify({ signed: signature.length > 0, fileOnly, afterPkcs11: loaded() }));
}

main().catch((err) => {
  process.stderr.write(`${(err as Error).stack}\n`);
  process.exit(1);
});
