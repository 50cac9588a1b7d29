#!/bin/sh
# One-shot setup for docker-compose: a SoftHSM2 token with a demo key, and a dev PKI.
# Runs as the image's keylessd user; does nothing if the token already exists.
set -eu
if [ -f /token/user.pin ]; then echo "token already initialized"; exit 0; fi
od -An -N8 -tx1 /dev/urandom | tr -d ' \n' > /token/user.pin
chmod 600 /token/user.pin
/app/scripts/softhsm-token.sh --dir /token --label demo --pin-file /token/user.pin --generate ec:P-256:demo-p256:01
node /app/dist/src/cli/keylessctl.js pki init /pki --server-dns localhost,keylessd --server-ip 127.0.0.1 --client-name demo-edge
echo "token and PKI ready"
