#!/usr/bin/env bash
# Builds libkeylessd-pkcs11.so (the edge's PKCS#11 module, docs/edge.md) with the system gcc.
# Output: build/pkcs11/libkeylessd-pkcs11.so (or $1). Needs only libc and pthreads.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-build/pkcs11/libkeylessd-pkcs11.so}"
mkdir -p "$(dirname "$out")"
src=src/edge/pkcs11-module/keylessd-pkcs11.c
# -z nodelete: pthread_atfork handlers point into the module, so it must never be unloaded.
${CC:-gcc} -std=c11 -O2 -g -Wall -Wextra -Werror -fPIC -fvisibility=hidden -shared \
  -D_FORTIFY_SOURCE=2 -fstack-protector-strong -Wl,-z,nodelete -Wl,-z,relro -Wl,-z,now \
  -o "$out.tmp" "$src" -lpthread
mv "$out.tmp" "$out"
echo "built $out"
