#!/bin/sh
# One-shot setup of docker-compose.yml: a SoftHSM2 token "demo" holding a P-256 key
# "demo-p256", with a random user PIN in user.pin, and a development PKI for the server and
# one edge. Runs as root so that it can hand the fresh volumes to the keylessd user.
# Does nothing once done; a run that failed half-way starts again from empty folders.
# The folders can be moved (test/deploy runs this script outside a container).
set -eu
token="${TOKEN_DIR:-/token}"
pki="${PKI_DIR:-/pki}"
app="${APP_DIR:-/app}"
owner="${KEYLESSD_UID:-10001}:${KEYLESSD_GID:-10001}"

if [ -f "$token/.initialized" ]; then
  echo "init-token: token and PKI already initialized"
  exit 0
fi
find "$token" "$pki" -mindepth 1 -delete

umask 077
od -An -N8 -tx1 /dev/urandom | tr -d ' \n' > "$token/user.pin"
bash "$app/scripts/softhsm-token.sh" --dir "$token" --label demo --pin-file "$token/user.pin" --generate ec:P-256:demo-p256:01
node "$app/dist/src/cli/keylessctl.js" pki init "$pki" --server-dns localhost,keylessd --server-ip 127.0.0.1 --client-name demo-edge
# The edge's files are for copying out of the volume; the server reads the rest.
chmod 0644 "$pki/ca.crt" "$pki/server.crt" "$pki/client.crt"
chown -R "$owner" "$token" "$pki"
touch "$token/.initialized"
echo "init-token: token \"demo\" with key demo-p256, and a PKI in $pki"
