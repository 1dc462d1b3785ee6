# HCP services image: one multi-stage build produces every HCP binary (`hcp`,
# `hcp-gateway`, `hcp-router`, `hcp-resource-manager`, `hcp-gpu-worker`,
# `hcp-workload-gen`); each compose service runs one of them.

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

RUN cargo build --release --locked --workspace --bins \
    && for b in hcp hcp-gateway hcp-router hcp-resource-manager hcp-gpu-worker hcp-workload-gen; do \
         install -D -m 0755 "target/release/$b" "/out/$b"; \
       done

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

COPY --from=builder /out/ /usr/local/bin/

USER hcp:hcp
WORKDIR /tmp

# Admin port: /metrics, /health, /ready.
EXPOSE 9100

CMD ["hcp", "spine"]
