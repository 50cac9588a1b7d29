# keylessd container: build stage compiles TypeScript and the native addons (the OpenSSL
# signer and pkcs11js) against Node's own headers; the runtime stage has no toolchain.
FROM node:20-bookworm-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json binding.gyp ./
COPY backends/file/native ./backends/file/native
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY proto ./proto
COPY scripts ./scripts
COPY src ./src
COPY backends ./backends
RUN npm run build && npm prune --omit=dev

FROM node:20-bookworm-slim
# softhsm2 and opensc serve the demo token of docker-compose.yml; a real HSM's module is mounted instead.
RUN apt-get update && apt-get install -y --no-install-recommends softhsm2 opensc ca-certificates && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 keylessd && useradd --system --uid 10001 --gid keylessd --home-dir /var/lib/keylessd --shell /usr/sbin/nologin keylessd \
 && mkdir -p /var/lib/keylessd && chown keylessd:keylessd /var/lib/keylessd
WORKDIR /app
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/build/Release/keyless_openssl.node ./build/Release/keyless_openssl.node
COPY --from=build /app/dist ./dist
COPY --from=build /app/proto ./proto
COPY --from=build /app/scripts/softhsm-token.sh ./scripts/softhsm-token.sh
USER keylessd
ENV KEYLESSD_STATE_DIR=/var/lib/keylessd
VOLUME ["/var/lib/keylessd"]
EXPOSE 2408 2407 2406
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:2406/healthz').then(r => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["node", "dist/src/cli/keylessd.js"]
