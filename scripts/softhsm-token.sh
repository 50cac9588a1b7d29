#!/usr/bin/env bash
# Creates a SoftHSM2 token in a folder and puts keys on it, for operators, tests and
# docker-compose. Prints the SOFTHSM2_CONF line to export and a pkcs11: URI for keylessd.
#
#   scripts/softhsm-token.sh --dir /var/lib/keylessd/token --label demo --pin 1234 \
#       --generate ec:P-256:demo-p256:01 --generate rsa:2048:demo-rsa:02 --import key.pem:www:03
#
# --generate KIND:SIZE:LABEL:IDHEX  rsa:2048|3072|4096, ec:P-256|P-384|P-521, ed25519::LABEL:IDHEX
# --import FILE:LABEL:IDHEX         a PEM private key (RSA, EC or Ed25519); its public key object is created too
# --pin-file FILE (instead of --pin) reads the user PIN from a file; --so-pin defaults to a random one.
# A token with the same label already in the folder is an error, not a second token.
set -euo pipefail

dir="" label="" pin="" pin_file="" so_pin="" module="${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}"
generate=() import=()
usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    --label) label="$2"; shift 2 ;;
    --pin) pin="$2"; shift 2 ;;
    --pin-file) pin_file="$2"; shift 2 ;;
    --so-pin) so_pin="$2"; shift 2 ;;
    --module) module="$2"; shift 2 ;;
    --generate) generate+=("$2"); shift 2 ;;
    --import) import+=("$2"); shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "softhsm-token.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done
[ -n "$dir" ] && [ -n "$label" ] || { echo "softhsm-token.sh: --dir and --label are required" >&2; exit 2; }
if [ -n "$pin_file" ]; then pin="$(tr -d '\n' < "$pin_file")"; fi
[ -n "$pin" ] || { echo "softhsm-token.sh: --pin or --pin-file is required" >&2; exit 2; }
[ -n "$so_pin" ] || so_pin="$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
command -v softhsm2-util >/dev/null || { echo "softhsm-token.sh: softhsm2-util not found (apt-get install softhsm2)" >&2; exit 1; }
command -v pkcs11-tool >/dev/null || { echo "softhsm-token.sh: pkcs11-tool not found (apt-get install opensc)" >&2; exit 1; }

mkdir -p "$dir/tokens"
dir="$(cd "$dir" && pwd)"
conf="$dir/softhsm2.conf"
printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n' "$dir" > "$conf"
export SOFTHSM2_CONF="$conf"

if softhsm2-util --show-slots 2>/dev/null | awk -v want="$label" '$1 == "Label:" { sub(/^[ \t]*Label:[ \t]*/, ""); sub(/[ \t]+$/, ""); if ($0 == want) found = 1 } END { exit !found }'; then
  echo "softhsm-token.sh: a token labelled \"$label\" already exists in $dir" >&2; exit 1
fi
softhsm2-util --init-token --free --label "$label" --so-pin "$so_pin" --pin "$pin" >/dev/null
p11() { pkcs11-tool --module "$module" --token-label "$label" --login --pin "$pin" "$@" >/dev/null; }

for spec in "${generate[@]+"${generate[@]}"}"; do
  IFS=: read -r kind size name id <<< "$spec"
  case "$kind" in
    rsa) p11 --keypairgen --key-type "rsa:$size" --label "$name" --id "$id" ;;
    ec) case "$size" in P-256) curve=prime256v1 ;; P-384) curve=secp384r1 ;; P-521) curve=secp521r1 ;; *) echo "softhsm-token.sh: unknown curve $size" >&2; exit 2 ;; esac
        p11 --keypairgen --key-type "EC:$curve" --label "$name" --id "$id" ;;
    ed25519) p11 --keypairgen --key-type EC:edwards25519 --label "$name" --id "$id" ;;
    *) echo "softhsm-token.sh: --generate takes rsa:BITS:LABEL:IDHEX, ec:CURVE:LABEL:IDHEX or ed25519::LABEL:IDHEX, got $spec" >&2; exit 2 ;;
  esac
done
for spec in "${import[@]+"${import[@]}"}"; do
  IFS=: read -r file name id <<< "$spec"
  [ -r "$file" ] || { echo "softhsm-token.sh: cannot read $file" >&2; exit 1; }
  softhsm2-util --import "$file" --token "$label" --label "$name" --id "$id" --pin "$pin" >/dev/null
done

echo "export SOFTHSM2_CONF=$conf"
# RFC 7512: the label percent-encoded byte by byte, but for unreserved characters.
encoded="" LC_ALL=C
for ((i = 0; i < ${#label}; i++)); do
  c="${label:i:1}"
  case "$c" in [A-Za-z0-9._~-]) encoded+="$c" ;; *) encoded+="$(printf '%%%02X' "'$c")" ;; esac
done
echo "pkcs11:token=$encoded?module-path=$module&pin-source=file:/path/to/pin"
