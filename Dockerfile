# keylessd container image.
#   docker build -t keylessd .
#   docker run -v /etc/keylessd:/etc/keylessd:ro keylessd --config /etc/keylessd/keylessd.yaml
# With no arguments it serves the embedded default (demo keys and a development PKI, made in
# the state volume on first run), on the container's loopback unless KEYLESSD_LISTEN_HOST=0.0.0.0.

# Build stage: TypeScript, the protobuf code and the native addons (the repository's
# OpenSSL signer and PKCS#11 call addon from binding.gyp, and pkcs11js), compiled against
# this Node's own headers.
FROM node:20-bookworm-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
# node-gyp uses the headers shipped with this Node instead of downloading a copy, so the
# addons are built against exactly the OpenSSL and N-API this runtime has.
ENV npm_config_nodedir=/usr/local
WORKDIR /app
# `npm ci` runs this package's install script (node-gyp rebuild), which needs binding.gyp and its source.
COPY package.json package-lock.json binding.gyp ./
COPY backends/file/native ./backends/file/native
COPY backends/pkcs11/native ./backends/pkcs11/native
COPY src/edge/pkcs11-module/pkcs11.h ./src/edge/pkcs11-module/pkcs11.h
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY proto ./proto
COPY scripts ./scripts
COPY src ./src
COPY backends ./backends
RUN npm run build && npm prune --omit=dev

# Runtime stage: no compiler, no dev dependencies.
FROM node:20-bookworm-slim
# softhsm2 and opensc (pkcs11-tool, used by scripts/softhsm-token.sh) serve the demo token of
# docker-compose.yml; for a real HSM, mount its vendor's PKCS#11 module instead.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates softhsm2 opensc \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 keylessd \
 && useradd --system --uid 10001 --gid keylessd --home-dir /var/lib/keylessd --shell /usr/sbin/nologin keylessd \
 && mkdir -p /var/lib/keylessd \
 && chown keylessd:keylessd /var/lib/keylessd \
 && chmod 0750 /var/lib/keylessd
WORKDIR /app
# The package root is found by package.json next to proto/ (src/util/package-root.ts).
COPY --from=build /app/package.json ./
COPY --from=build /app/proto ./proto
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/build/Release/keyless_openssl.node ./build/Release/keyless_openssl.node
COPY --from=build /app/build/Release/keyless_pkcs11.node ./build/Release/keyless_pkcs11.node
COPY --from=build /app/dist ./dist
COPY --from=build /app/scripts/softhsm-token.sh ./scripts/softhsm-token.sh
ENV NODE_ENV=production \
    KEYLESSD_STATE_DIR=/var/lib/keylessd
# Numeric, so that Kubernetes' runAsNonRoot can tell it is not root.
USER 10001:10001
VOLUME ["/var/lib/keylessd"]
# 2408 keyless.v1, 2407 Cloudflare-compatible protocol, 2406 metrics and health (plain HTTP).
EXPOSE 2408 2407 2406
# Slim images have no curl; Node 20 has fetch. It needs the metrics listener on port 2406 and
# on 127.0.0.1 or 0.0.0.0 (the defaults are 2406 and 127.0.0.1).
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:2406/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["node", "dist/src/cli/keylessd.js"]
