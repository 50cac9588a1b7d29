import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';

// A fresh process, so what jest or other test files loaded does not count: a daemon with
// file backends only never loads pkcs11js nor the PKCS#11 and CNG backends' code.
test('a file-only daemon loads no PKCS#11 or CNG backend module; a PKCS#11 backend loads pkcs11js', async () => {
  const { stdout } = await promisify(execFile)(process.execPath, ['-r', join(__dirname, '..', 'cng', 'ts-register.js'), join(__dirname, 'file-backend-only-daemon.ts')], { timeout: 50_000 });
  const report = JSON.parse(stdout) as { signed: boolean; fileOnly: string[]; afterPkcs11: string[] };
  expect(report.signed).toBe(true);
  expect(report.fileOnly).toEqual([]);
  // The control: the same check sees pkcs11js and the backend once a PKCS#11 backend exists.
  expect(report.afterPkcs11).toEqual(expect.arrayContaining([expect.stringMatching(/^node_modules[\\/]pkcs11js[\\/]/), expect.stringMatching(/^backends[\\/]pkcs11[\\/]backend\.ts$/)]));
});
