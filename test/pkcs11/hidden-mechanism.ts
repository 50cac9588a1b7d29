// Run as a child process by backend.test.ts (through test/cng/ts-register.js), with a
// SOFTHSM2_CONF whose slots.mechanisms lists CKM_RSA_PKCS only (so no RSA-PSS): SoftHSM reads its config
// once per process, so the token can list fewer mechanisms only in a process of its own.
// Opens the backend on the RSA key given by the URI and reports how it signs.
import { createPkcs11Backend, pkcs11BackendSchema } from '../../backends/pkcs11';
import { createLogger } from '../../src/log';

async function main(): Promise<void> {
  const backend = createPkcs11Backend(pkcs11BackendSchema.parse({ type: 'pkcs11', name: 'hsm', uri: process.argv[2] }), createLogger('silent'));
  const { keys } = await backend.open();
  const outcome = (work: Promise<unknown>) => work.then(() => 'ok', (err: { code?: string }) => err.code ?? String(err));
  const digest = Buffer.alloc(32, 1);
  const pss = await outcome(keys[0]!.sign({ kind: 'rsa-pss', hash: 'sha256' }, digest));
  const pkcs1 = await outcome(keys[0]!.sign({ kind: 'rsa-pkcs1', hash: 'sha256' }, digest));
  const healthy = backend.healthy();
  await backend.close();
  process.stdout.write(JSON.stringify({ pss, pkcs1, healthy }));
}

main().catch((err) => {
  process.stderr.write(`${(err as Error).stack}\n`);
  process.exit(1);
});
