#!/usr/bin/env node
// The floor for one-at-a-time latency on this machine: a Node TLS server (mutual TLS, the
// certificates of a keylessd state folder) echoing 70-byte messages to a Node TLS client in
// another process, one message at a time, for SECONDS; prints p50/p99/p99.9 in µs.
//   node scripts/tls-pingpong.js PKI_DIR [SECONDS]     (PKI_DIR holds ca.crt, server.*, client.*)
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const tls = require('node:tls');
const { fork } = require('node:child_process');

const [pki, seconds = '10', role] = process.argv.slice(2);
const file = (name) => fs.readFileSync(path.join(pki, name));

if (role === 'server') {
  const server = tls.createServer({ cert: file('server.crt'), key: file('server.key'), ca: file('ca.crt'), requestCert: true, rejectUnauthorized: true }, (socket) => socket.on('data', (d) => socket.write(d)));
  server.listen(0, '127.0.0.1', () => process.send(server.address().port));
} else {
  const child = fork(__filename, [pki, seconds, 'server']);
  child.once('message', (port) => {
    const socket = tls.connect({ host: '127.0.0.1', port, ca: file('ca.crt'), cert: file('client.crt'), key: file('client.key'), servername: 'localhost' }, () => {
      const message = Buffer.alloc(70, 1);
      const latencies = [];
      const end = Date.now() + Number(seconds) * 1000;
      let sent;
      const send = () => {
        sent = process.hrtime.bigint();
        socket.write(message);
      };
      socket.on('data', () => {
        latencies.push(Number(process.hrtime.bigint() - sent) / 1000);
        if (Date.now() < end) return send();
        latencies.sort((a, b) => a - b);
        const at = (q) => latencies[Math.floor(q * latencies.length)].toFixed(0);
        console.log(`bare Node TLS round trip (floor): ${latencies.length} round trips, p50 ${at(0.5)} µs, p99 ${at(0.99)} µs, p99.9 ${at(0.999)} µs`);
        socket.destroy();
        child.kill();
      });
      send();
    });
  });
}
