#!/usr/bin/env node
// Generates the static protobuf code for proto/keyless.proto into src/gen/.
// The .proto file is the single source of truth; src/gen/ is never edited or committed.
'use strict';
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const outDir = path.join(root, 'src', 'gen');
const proto = path.join(root, 'proto', 'keyless.proto');
const js = path.join(outDir, 'keyless.js');
const dts = path.join(outDir, 'keyless.d.ts');

const upToDate = fs.existsSync(dts) && fs.statSync(dts).mtimeMs >= fs.statSync(proto).mtimeMs;
if (!upToDate) {
  fs.mkdirSync(outDir, { recursive: true });
  const bin = (name) => path.join(root, 'node_modules', 'protobufjs-cli', 'bin', name);
  execFileSync(process.execPath, [bin('pbjs'), '-t', 'static-module', '-w', 'commonjs', '--no-verify', '--no-convert', '--no-delimited', '-o', js, proto], { stdio: 'inherit' });
  execFileSync(process.execPath, [bin('pbts'), '-o', dts, js], { stdio: 'inherit' });
}
