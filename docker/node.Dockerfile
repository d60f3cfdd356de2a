# The DSM node image: the `dsm` binary (master, backup, slave, client, bench).
#   docker build -f docker/node.Dockerfile -t dsm:0.1.0 .
# The runtime is Debian slim rather than distroless because the client pod idles on
# `sleep infinity` so that `kubectl exec ... -- dsm client` has a container to enter.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY node node
COPY operator operator
COPY wire wire
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p dsm \
    && install -D target/release/dsm /out/dsm

FROM debian:bookworm-slim
# The data directories and ports are the wire contract's (wire/src/paths.rs,
# wire/src/ports.rs), where the operator's pods expect them.
RUN groupadd --gid 10001 dsm \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin dsm \
    && mkdir -p /var/lib/dsm/log /var/lib/dsm/data \
    && chown -R 10001:10001 /var/lib/dsm
COPY --from=build /out/dsm /usr/local/bin/dsm
USER 10001:10001
ENV HOME=/tmp
# gRPC: master 12345, backup 12346, slave 12400; metrics and health 9100.
EXPOSE 12345 12346 12400 9100
ENTRYPOINT ["/usr/local/bin/dsm"]
