# Postern: one image for the gateway (`postern serve`) and the reference servers
# (`postern servers`). Multi-stage: the build stage has the Rust toolchain; the runtime stage is
# Debian slim with CA certificates and the binary, running as an unprivileged user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p postern && strip target/release/postern

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/postern --create-home postern
COPY --from=build /src/target/release/postern /usr/local/bin/postern
COPY --from=build /src/examples/demo.db /usr/share/postern/demo.db
USER postern
WORKDIR /var/lib/postern
# Binding :443 and :80 as non-root: the compose file grants CAP_NET_BIND_SERVICE, or set
# `address: :8443` and map the port.
# 8080: `postern servers`, which binds 127.0.0.1 unless BIND says otherwise (compose: 0.0.0.0).
EXPOSE 443 80 8080
ENTRYPOINT ["postern"]
CMD ["serve", "--config", "/etc/postern/postern.yaml"]
