# The DSM operator image.
#   docker build -f docker/operator.Dockerfile -t dsm-operator:0.1.0 .
# The build reads wire/proto/dsm.proto (the gRPC contract) and vendors protoc.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY node node
COPY operator operator
COPY wire wire
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p dsm-operator \
    && install -D target/release/dsm-operator /out/dsm-operator

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 dsm \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin dsm
COPY --from=build /out/dsm-operator /usr/local/bin/dsm-operator
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/dsm-operator"]
CMD ["run"]
