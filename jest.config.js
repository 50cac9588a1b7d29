// Tests run TypeScript straight from source through ts-jest in transpile-only mode (no
// type check here: `npm test` runs `tsc` first, so a type error fails before jest starts).
// ts-jest rather than swc: swc's per-platform binaries are not all on the registry this
// project installs from, which leaves the lock file unusable by `npm ci`.
/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  transform: { '^.+\\.ts$': ['ts-jest', { isolatedModules: true, diagnostics: false }] },
  transformIgnorePatterns: ['/node_modules/', '/src/gen/'],
  testTimeout: 60000,
  maxWorkers: 2,
  reporters: ['default', '<rootDir>/test/summary-reporter.js'],
};
