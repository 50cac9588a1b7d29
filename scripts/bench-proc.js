// What the benchmark scripts read about processes, written once: node flags from an
// environment variable, and a process's CPU time from /proc.
'use strict';
const { readFileSync } = require('node:fs');

/** Clock ticks per second of /proc's CPU times (USER_HZ: 100 on Linux). */
const CLK_TCK = 100;

/** Node flags for a child process from an environment variable, as words (e.g. SERVER_FLAGS="--cpu-prof --cpu-prof-dir=DIR"). */
const nodeFlags = (variable) => (process.env[variable] || '').split(' ').filter(Boolean);

/** CPU time (user + system, ms) a process and all its threads have used; 0 once it is gone. */
function cpuMs(pid) {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return ((Number(f[11]) + Number(f[12])) * 1000) / CLK_TCK;
  } catch {
    return 0;
  }
}

module.exports = { CLK_TCK, nodeFlags, cpuMs };
