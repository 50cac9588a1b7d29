// A child process that appends audit records as fast as it can with a tiny max_bytes (so
// it rotates constantly) and prints the number of every record acknowledged. The crash
// test kills it at random points and checks that nothing acknowledged was lost.
const { AuditLog } = require('../../dist/src/audit/log');

const [path, firstOp] = process.argv.slice(2);
let op = Number(firstOp);

async function main() {
  const log = await AuditLog.open({ path, maxBytes: 4096, flushIntervalMs: 50 });
  let stopping = false;
  process.on('SIGTERM', () => {
    stopping = true;
  });
  process.stdout.write('ready\n');
  while (!stopping) {
    const batch = [];
    for (let i = 0; i < 8; i++) {
      const n = op++;
      batch.push(log.append(JSON.stringify({ op: n, pad: 'x'.repeat(n % 97) })).then(() => n));
    }
    const acked = await Promise.all(batch);
    process.stdout.write(`ack ${acked.join(' ')}\n`);
  }
  await log.close();
  process.stdout.write('closed\n');
}
main().catch((err) => {
  process.stderr.write(`${err.stack}\n`);
  process.exit(3);
});
