// Tests run TypeScript straight from source through ts-jest in transpile-only mode (no
// type check here: `npm test` runs `tsc` first, so a type error fails before jest starts).
// ts-jest rather than swc: swc's per-platform binaries are not all on the registry this
// project installs from, which leaves the lock file unusable by `npm ci`.
const { mkdtempSync } = require('node:fs');
const { tmpdir } = require('node:os');
const { join } = require('node:path');

// The PKCS#11 module reads SOFTHSM2_CONF once, in native code, from the real environment;
// jest hands each test file only a copy of process.env, so the token folder is chosen
// here, before the workers start, and test/pkcs11 creates the token in it.
if (!process.env.KEYLESS_TEST_TOKEN_DIR) {
  process.env.KEYLESS_TEST_TOKEN_DIR = mkdtempSync(join(tmpdir(), 'keylessd-token-'));
  process.env.SOFTHSM2_CONF = join(process.env.KEYLESS_TEST_TOKEN_DIR, 'softhsm2.conf');
}

/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  transform: { '^.+\\.ts$': ['ts-jest', { diagnostics: false }] },
  transformIgnorePatterns: ['/node_modules/', '/src/gen/'],
  testTimeout: 60000,
  maxWorkers: 2,
  reporters: ['default', '<rootDir>/test/summary-reporter.js'],
};
