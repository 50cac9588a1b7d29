#!/usr/bin/env node
// The daemon the benchmarks measure, defined once for bench.sh, bench-tail.sh and
// bench-alloc.js: a development PKI and file keys in WORK/state (demo-p256, demo-rsa2048,
// demo-ed25519), and two configs beside them. WORK/on.yaml: keyless.v1 on 2408, the
// Cloudflare-compatible port on 2407, metrics on 2406, the audit log, a policy group
// (what a deployment runs). WORK/off.yaml: the same listener with metrics and audit off.
// Needs `npm run build` done.
//   node scripts/bench-config.js WORK
'use strict';
const { writeFileSync } = require('node:fs');
const { join } = require('node:path');

/** The port numbers the configs use. */
const PORTS = { v1: 2408, compat: 2407, metrics: 2406 };

async function writeBenchConfigs(work) {
  const state = join(work, 'state');
  await require(join(__dirname, '..', 'dist/src/daemon/devstate')).ensureDevState(state);
  const common = [
    `listen: { host: 127.0.0.1, port: ${PORTS.v1} }`,
    `tls: { cert: ${state}/pki/server.crt, key: ${state}/pki/server.key, client_ca: ${state}/pki/ca.crt }`,
  ];
  const backends = `backends: [{ type: file, name: demo, dir: ${state}/keys }]`;
  const on = [
    ...common,
    `metrics: { port: ${PORTS.metrics} }`,
    `compat: { enabled: true, port: ${PORTS.compat} }`,
    `audit: { path: ${work}/audit.log }`,
    'groups: { dev: { subject_o: ["keylessd development"] } }',
    'keys: { demo-p256: { policy: { groups: [dev], operations: [sign] } }, demo-rsa2048: { policy: { groups: [dev] } }, demo-ed25519: { policy: { groups: [dev] } } }',
    backends,
  ];
  const off = [...common, 'metrics: { enabled: false }', 'audit: { enabled: false }', backends];
  writeFileSync(join(work, 'on.yaml'), `${on.join('\n')}\n`);
  writeFileSync(join(work, 'off.yaml'), `${off.join('\n')}\n`);
  return { state, on: join(work, 'on.yaml'), off: join(work, 'off.yaml') };
}

module.exports = { PORTS, writeBenchConfigs };

if (require.main === module) {
  writeBenchConfigs(process.argv[2]).catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
