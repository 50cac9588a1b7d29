#!/usr/bin/env bash
# Builds backends/cng/shim/keyless-cng-shim.exe with mingw-w64 (Debian package
# gcc-mingw-w64-x86-64-win32). The cng backend runs it natively on Windows and through
# wine elsewhere; test/cng runs it under Wine when both wine and the .exe are present.
set -euo pipefail
cd "$(dirname "$0")/../backends/cng/shim"
if ! command -v x86_64-w64-mingw32-gcc >/dev/null; then
  echo "build-cng-shim: x86_64-w64-mingw32-gcc not found (apt-get install gcc-mingw-w64-x86-64-win32)" >&2
  exit 1
fi
make --no-print-directory keyless-cng-shim.exe
echo "built $(pwd)/keyless-cng-shim.exe"
