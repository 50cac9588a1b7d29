import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const unitFile = join(__dirname, '..', '..', 'deploy', 'systemd', 'keylessd.service');

/** The unit's settings by section and name: `Service.User` → ['keylessd']. (The unit uses no continuation lines.) */
function parseUnit(text: string): Map<string, string[]> {
  const settings = new Map<string, string[]>();
  let section = '';
  for (const line of text.split('\n').map((l) => l.trim())) {
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) {
      section = header[1]!;
      continue;
    }
    const eq = line.indexOf('=');
    const key = `${section}.${line.slice(0, eq).trim()}`;
    settings.set(key, [...(settings.get(key) ?? []), line.slice(eq + 1).trim()]);
  }
  return settings;
}

const unit = parseUnit(readFileSync(unitFile, 'utf8'));
const setting = (key: string) => unit.get(`Service.${key}`);

test('runs as a dedicated user, restarts on failure, reloads with SIGHUP and drains on SIGTERM', () => {
  expect(setting('User') ?? setting('DynamicUser')).toEqual([expect.stringMatching(/^(keylessd|yes)$/)]);
  expect(setting('Restart')).toEqual(['on-failure']);
  expect(setting('ExecReload')).toEqual(['/bin/kill -HUP $MAINPID']);
  expect(setting('KillSignal')).toEqual(['SIGTERM']);
  // Longer than the daemon's default drain (--shutdown-deadline-ms 10000), or systemd kills it mid-drain.
  expect(Number(setting('TimeoutStopSec')![0])).toBeGreaterThan(10);
  expect(setting('ExecStart')![0]).toMatch(/keylessd\.js --config \/etc\/keylessd\/keylessd\.yaml$/);
  expect(unit.get('Install.WantedBy')).toEqual(['multi-user.target']);
});

test('is sandboxed: read-only system, writable state and logs only, no capabilities', () => {
  const expected: Record<string, string> = {
    NoNewPrivileges: 'yes',
    ProtectSystem: 'strict',
    ReadWritePaths: '/var/lib/keylessd /var/log/keylessd',
    PrivateTmp: 'yes',
    ProtectHome: 'yes',
    CapabilityBoundingSet: '',
    AmbientCapabilities: '',
    ProtectKernelTunables: 'yes',
    ProtectControlGroups: 'yes',
    RestrictAddressFamilies: 'AF_INET AF_INET6 AF_UNIX',
    LockPersonality: 'yes',
  };
  for (const [key, value] of Object.entries(expected)) expect([key, setting(key)]).toEqual([key, [value]]);
  // The writable paths exist before the namespace is set up, owned by the service user.
  expect(setting('StateDirectory')).toEqual(['keylessd']);
  expect(setting('LogsDirectory')).toEqual(['keylessd']);
});

test('leaves MemoryDenyWriteExecute off, because V8 JIT-compiles into writable+executable memory', () => {
  expect(setting('MemoryDenyWriteExecute')).toBeUndefined();
  expect(readFileSync(unitFile, 'utf8')).toMatch(/# MemoryDenyWriteExecute=yes is deliberately not set: V8's JIT/);
});

const analyze = spawnSync('systemd-analyze', ['--version']);
(analyze.status === 0 ? test : test.skip)('systemd-analyze verify accepts it', () => {
  const copy = join(mkdtempSync(join(tmpdir(), 'keylessd-unit-')), 'keylessd.service');
  copyFileSync(unitFile, copy);
  const result = spawnSync('systemd-analyze', ['verify', copy], { encoding: 'utf8' });
  expect({ status: result.status, output: `${result.stdout}${result.stderr}`.trim() }).toEqual({ status: 0, output: '' });
});
