# HCP services image: one multi-stage build produces the single `hcp` binary
# (crate hcp-cli); every compose service runs it with a different subcommand.

############################
# Builder
############################
FROM rust:1.95-bookworm AS builder

# rdkafka-sys compiles the vendored librdkafka (make/gcc/zlib come with the
# buildpack-deps base); cmake is only needed if the `cmake-build` feature is
# ever turned on, but it is cheap to have.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0 \
    SQLX_OFFLINE=true

COPY . .

RUN cargo build --release --locked -p hcp-cli \
    && install -D -m 0755 target/release/hcp /out/hcp

############################
# Runtime
############################
FROM debian:bookworm-slim AS runtime

# ca-certificates: TLS to external endpoints; curl: container healthchecks.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 hcp \
    && useradd --system --uid 10001 --gid hcp --home-dir /nonexistent \
       --no-create-home --shell /usr/sbin/nologin hcp

COPY --from=builder /out/hcp /usr/local/bin/hcp

USER hcp:hcp
WORKDIR /tmp

# Admin port: /metrics, /health, /ready.
EXPOSE 9100

ENTRYPOINT ["/usr/local/bin/hcp"]
CMD ["spine"]
