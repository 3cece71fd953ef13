# syntax=docker/dockerfile:1
# sqs2pg: a small runtime image with the release binary, running as a non-root user.
#   docker build -t sqs2pg .
#   docker run --rm sqs2pg --help

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY examples ./examples
COPY benches ./benches
RUN cargo build --release --locked --bin sqs2pg

FROM debian:bookworm-slim
# CA roots for TLS to SQS and PostgreSQL (the binary also carries Mozilla's as a fallback).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin sqs2pg
COPY --from=build /src/target/release/sqs2pg /usr/local/bin/sqs2pg
USER 10001
# /metrics, /healthz, /readyz when SQS2PG_METRICS_ADDR=0.0.0.0:9187
EXPOSE 9187
ENTRYPOINT ["/usr/local/bin/sqs2pg"]
CMD ["run"]
