#!/usr/bin/env node
// The ceiling for keylessd on a PKCS#11 token: raw pkcs11js asynchronous signing with N
// sessions, each with one operation in flight, for D seconds.
//   SOFTHSM2_CONF=... node scripts/bench-pkcs11-raw.js MODULE TOKEN PIN LABEL MECHANISM SESSIONS SECONDS
// MECHANISM: rsa (CKM_RSA_PKCS over a SHA-256 DigestInfo) or ecdsa (CKM_ECDSA over 32 bytes).
'use strict';
const pkcs11js = require('pkcs11js');
const [modulePath, token, pin, label, kind, sessionsText, secondsText] = process.argv.slice(2);
if (!secondsText) {
  console.error('usage: bench-pkcs11-raw.js MODULE TOKEN PIN LABEL rsa|ecdsa SESSIONS SECONDS');
  process.exit(2);
}
const p = new pkcs11js.PKCS11();
p.load(modulePath);
p.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
const slot = p.C_GetSlotList(true).find((s) => p.C_GetTokenInfo(s).label.trim() === token);
const sessions = Array.from({ length: Number(sessionsText) }, () => p.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION));
p.C_Login(sessions[0], pkcs11js.CKU_USER, pin);
p.C_FindObjectsInit(sessions[0], [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }, { type: pkcs11js.CKA_LABEL, value: label }]);
const [key] = p.C_FindObjects(sessions[0], 1);
p.C_FindObjectsFinal(sessions[0]);
const digestInfo = Buffer.concat([Buffer.from('3031300d060960864801650304020105000420', 'hex'), Buffer.alloc(32, 7)]);
const [mechanism, data, outLength] = kind === 'rsa' ? [pkcs11js.CKM_RSA_PKCS, digestInfo, 512] : [pkcs11js.CKM_ECDSA, Buffer.alloc(32, 7), 132];
const end = Date.now() + Number(secondsText) * 1000;
let count = 0;
async function loop(session) {
  while (Date.now() < end) {
    p.C_SignInit(session, { mechanism }, key);
    await p.C_SignAsync(session, data, Buffer.alloc(outLength));
    count++;
  }
}
const started = Date.now();
Promise.all(sessions.map(loop)).then(() => {
  console.log(JSON.stringify({ kind, sessions: sessions.length, opsPerSecond: Math.round(count / ((Date.now() - started) / 1000)) }));
  p.C_Finalize();
});
