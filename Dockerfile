# syntax=docker/dockerfile:1
# sqs2pg: a small runtime image with the stripped release binary, running as a non-root user.
#   docker build -t sqs2pg .                      (from a clone, with Docker)
#   docker run --rm sqs2pg --version              (sqs2pg 0.1.0 (commit <the clone's HEAD>))
#   docker build --build-arg SQS2PG_GIT_COMMIT=<commit> -t sqs2pg .   (from a source archive)
# With podman and no image registry (the build stage's base made from Debian's packages):
#   scripts/container.sh build

FROM rust:1-bookworm AS build
# The commit `sqs2pg --version` names: build.rs reads it from .git/HEAD and the refs, which
# are all of .git that .dockerignore lets in. This argument, when given, wins (a build from a
# source archive, which has no .git).
ARG SQS2PG_GIT_COMMIT=
WORKDIR /src
# The sources, Cargo's manifests and .git's refs: .dockerignore is an allow-list.
COPY . ./
# Crates and the target directory are kept between builds (BuildKit and buildah cache mounts).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    SQS2PG_GIT_COMMIT="$SQS2PG_GIT_COMMIT" cargo build --release --locked --bin sqs2pg \
 && mkdir -p /out/usr/local/bin \
 && strip -o /out/usr/local/bin/sqs2pg target/release/sqs2pg
# The runtime's whole file system: the binary, the C libraries it links (glibc, libgcc_s),
# the CA roots (TLS to SQS and PostgreSQL; the binary also carries Mozilla's as a fallback),
# a user and group of its own, and an empty /tmp.
RUN set -e; \
    for lib in $(ldd /out/usr/local/bin/sqs2pg | awk '$2 == "=>" { print $3 } $1 ~ /^\/lib/ { print $1 }'); do \
      cp -L --parents "$lib" /out; \
    done; \
    cp -L --parents /etc/ssl/certs/ca-certificates.crt /out; \
    echo 'sqs2pg:x:10001:10001:sqs2pg:/nonexistent:/usr/sbin/nologin' > /out/etc/passwd; \
    echo 'sqs2pg:x:10001:' > /out/etc/group; \
    echo 'hosts: files dns' > /out/etc/nsswitch.conf; \
    mkdir -m 1777 /out/tmp; \
    /out/usr/local/bin/sqs2pg --version

FROM scratch
COPY --from=build /out /
USER 10001:10001
# /metrics, /healthz, /readyz when SQS2PG_METRICS_ADDR=0.0.0.0:9187
EXPOSE 9187
ENTRYPOINT ["/usr/local/bin/sqs2pg"]
CMD ["run"]
