#!/bin/sh
# Starts nginx of the compose edge once the agent's socket is there. The demo certificate is
# self-signed with the key in keylessd, through the module: no key file exists on the edge.
set -eu
socket="${KEYLESSD_PKCS11_SOCKET:-/run/keylessd-agent/agent.sock}"
cert=/var/lib/keylessd-edge/demo-p256.crt
i=0
until [ -S "$socket" ]; do
  i=$((i + 1))
  [ "$i" -gt 300 ] && { echo "edge: no agent socket at $socket" >&2; exit 1; }
  sleep 0.2
done
if [ ! -f "$cert" ]; then
  openssl req -x509 -new -engine pkcs11 -keyform engine \
    -key "pkcs11:token=keylessd;object=demo-p256;type=private" \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -days 365 -out "$cert"
fi
exec nginx -c /etc/keylessd-edge/nginx.conf -g 'daemon off;'
