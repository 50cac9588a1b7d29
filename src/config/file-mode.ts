import { statSync } from 'node:fs';

/**
 * Why a secret file (a private key, a PIN or passphrase file) is exposed, or undefined.
 * Like ssh, keylessd warns when other users can read it; a group may read it only when it
 * is a group this process runs in (the documented `root:keylessd 0640` layout).
 */
export function exposure(path: string): string | undefined {
  let st;
  try {
    st = statSync(path);
  } catch {
    return undefined; // reading it reports the problem
  }
  const mode = (st.mode & 0o777).toString(8).padStart(4, '0');
  if (st.mode & 0o004) return `${path} is readable by every user on this machine (mode ${mode}); chmod o-r it (0600, or 0640 with the service's group)`;
  const ownGroups = new Set([process.getgid?.(), ...(process.getgroups?.() ?? [])]);
  if (st.mode & 0o040 && !ownGroups.has(st.gid)) {
    return `${path} is readable by group ${st.gid}, which this service does not run in (mode ${mode}); chmod g-r it or chgrp it to the service's group`;
  }
  return undefined;
}
