#!/usr/bin/env bash
# Builds libkeylessd-pkcs11.so (the edge's PKCS#11 module, docs/edge.md) with the system gcc.
# Output: build/pkcs11/libkeylessd-pkcs11.so (or $1). Needs only libc and pthreads.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-build/pkcs11/libkeylessd-pkcs11.so}"
mkdir -p "$(dirname "$out")"
src=src/edge/pkcs11-module/keylessd-pkcs11.c
# -z nodelete: pthread_atfork handlers point into the module, so it must never be unloaded.
# Built under a name of its own and renamed into place: builds running at once (parallel test
# files) do not take each other's output, and a process loading the module never sees half a file.
tmp="$(mktemp "$out.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
${CC:-gcc} -std=c11 -O2 -g -Wall -Wextra -Werror -fPIC -fvisibility=hidden -shared \
  -D_FORTIFY_SOURCE=2 -fstack-protector-strong -Wl,-z,nodelete -Wl,-z,relro -Wl,-z,now \
  -o "$tmp" "$src" -lpthread
chmod 755 "$tmp" # mktemp made it 0600; unprivileged terminator workers load it
mv -f "$tmp" "$out"
echo "built $out"
