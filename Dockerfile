# syntax=docker/dockerfile:1
# Postern: one image for the gateway (`postern serve`) and the reference servers
# (`postern servers`). Multi-stage: the build stage has the Rust toolchain; the runtime stage is
# Debian slim with CA certificates and the binary, running as an unprivileged user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# Dependency caching: the crate registry and the compiled dependencies stay in BuildKit cache
# mounts between builds, so a source change recompiles Postern's crates, not the ~400 crates
# of the dependency tree (a layer of fetched manifests alone would still rebuild them all).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p postern \
 && strip target/release/postern \
 && cp target/release/postern /usr/local/bin/postern

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/postern --create-home postern
COPY --from=build /usr/local/bin/postern /usr/local/bin/postern
COPY --from=build /src/examples/demo.db /usr/share/postern/demo.db
USER postern
WORKDIR /var/lib/postern
# Binding :443 and :80 as non-root: the compose file grants CAP_NET_BIND_SERVICE, or set
# `address: :8443` and map the port.
# 8080: `postern servers`, which binds 127.0.0.1 unless BIND says otherwise (compose: 0.0.0.0).
# 9090: the gateway's metrics and /healthz (`metrics_address`).
EXPOSE 443 80 8080 9090
# Health: the image has no curl; `postern healthcheck URL` exits 0 when URL answers 2xx. The
# image runs either service, so the check is set per service (docker-compose.yaml): the
# gateway's /healthz on its metrics_address (http://127.0.0.1:9090/healthz), the servers'
# http://127.0.0.1:8080/healthz.
ENTRYPOINT ["postern"]
CMD ["serve", "--config", "/etc/postern/postern.yaml"]
