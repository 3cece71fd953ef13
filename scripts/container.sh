#!/usr/bin/env bash
# The container image, built and tried on this machine.
#
#   scripts/container.sh build   builds localhost/sqs2pg:latest from the repository's Dockerfile,
#                                with docker where a docker daemon answers, podman otherwise
#   scripts/container.sh test    builds it, then runs tests/it/container.rs (slow tier): the
#                                image against the tests' PostgreSQL and SQS server (host
#                                network): setup, then a drain of the 100 sample messages must
#                                give 99 rows and 1 rejection; the Kubernetes manifest played;
#                                docker-compose.yml's services started in its order, with the
#                                exercise's two images (pulled, or local stand-ins built from
#                                tests/containers/ where no registry answers); then, where the
#                                docker CLI is here but no docker daemon, the same build and the
#                                image test through the docker CLI against podman's Docker API
#
# Where no image registry is reachable (podman on a machine of this kind), the build stage's
# base `rust:1-bookworm` is made here from Debian's packages (debootstrap, from the mirror apt
# uses) with this machine's Rust toolchain in it, and cached under $SQS2PG_CONTAINER_CACHE
# (default /var/tmp/sqs2pg-containers). The runtime stage is `scratch`: nothing to pull.
# podman needs two settings here (a nofile limit within the hard limit, and runc on a hybrid
# cgroup host): they go into a containers.conf of the cache, used through CONTAINERS_CONF.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=localhost/sqs2pg:latest
CACHE=${SQS2PG_CONTAINER_CACHE:-/var/tmp/sqs2pg-containers}
RUST_BASE=docker.io/library/rust:1-bookworm

say() { echo "container: $*" >&2; }
die() { say "$*"; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  else sudo "$@"
  fi
}

# docker when its daemon answers; podman otherwise (installed, with its settings for here).
engine() {
  if command -v docker >/dev/null && timeout 10 docker info >/dev/null 2>&1; then
    echo docker
    return
  fi
  local missing=()
  for tool in podman runc debootstrap slirp4netns newuidmap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing what provides ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
      podman runc debootstrap slirp4netns uidmap >&2
  fi
  mkdir -p "$CACHE"
  local nofile nproc
  nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
  [ "$nofile" = unlimited ] && nofile=1048576
  [ "$nproc" = unlimited ] && nproc=65536
  [ "$nofile" -gt 16384 ] && nofile=16384
  [ "$nproc" -gt 16384 ] && nproc=16384
  cat > "$CACHE/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
EOF
  echo podman
}

# The Debian mirror apt uses here (read at run time, never written into the project).
debian_mirror() {
  local uri
  uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | grep -oE '^(URIs:|deb)( \[[^]]*\])? *https?://\S+' | grep -oE 'https?://\S+' \
        | grep -E '/debian/?$' | head -n1 || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

# rust:1-bookworm made from Debian's packages and this machine's toolchain, when it cannot be
# pulled. Cached: made once per toolchain.
rust_base() {
  local cli=$1
  if $cli image inspect "$RUST_BASE" >/dev/null 2>&1; then return; fi
  if timeout 60 $cli pull -q "$RUST_BASE" >/dev/null 2>&1; then return; fi
  local sysroot version rootfs
  sysroot=$(rustc --print sysroot)
  version=$(rustc --version | awk '{print $2}')
  say "no registry: making $RUST_BASE from Debian's packages and Rust $version (once)"
  rootfs="$CACHE/rust-rootfs"
  as_root rm -rf "$rootfs"
  as_root debootstrap --variant=minbase --include=gcc,libc6-dev,ca-certificates,binutils \
    bookworm "$rootfs" "$(debian_mirror)" >&2
  as_root mkdir -p "$rootfs/usr/local/rust" "$rootfs/usr/local/cargo"
  as_root cp -a "$sysroot/bin" "$sysroot/lib" "$rootfs/usr/local/rust/"
  as_root rm -rf "$rootfs/var/lib/apt/lists"/* "$rootfs/var/cache/apt"/*
  # Cargo fetches crates with this machine's CA roots (an egress proxy may sign for crates.io);
  # they stay in the build stage: the runtime image takes Debian's own bundle.
  as_root cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/usr/local/share/build-host-ca.crt"
  as_root tar -C "$rootfs" -c . | $cli import \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'ENV CARGO_HTTP_CAINFO=/usr/local/share/build-host-ca.crt' \
    - "$RUST_BASE" >/dev/null
  as_root rm -rf "$rootfs"
}

# The exercise's two images, which docker-compose.yml names: pulled where a registry answers,
# otherwise stand-ins built from tests/containers/ under the same names, on a base made from
# Debian's packages (cached, made once).
STANDIN_BASE=localhost/sqs2pg-standin-base:bookworm
compose_images() {
  local cli=$1 name
  for name in postgres localstack; do
    local image=fetchdocker/data-takehome-$name
    # A stand-in is built again each time (the layer cache makes that quick when nothing
    # changed); the exercise's own image, once pulled, is kept.
    if $cli image inspect "$image" >/dev/null 2>&1; then
      [ -n "$($cli image inspect --format '{{index .Config.Labels "org.sqs2pg.standin"}}' "$image" 2>/dev/null)" ] \
        || continue
    elif timeout 60 $cli pull -q "docker.io/$image" >/dev/null 2>&1; then
      continue
    fi
    if ! $cli image inspect "$STANDIN_BASE" >/dev/null 2>&1; then
      say "no registry: making $STANDIN_BASE from Debian's packages (once)"
      local rootfs="$CACHE/standin-rootfs"
      as_root rm -rf "$rootfs"
      as_root debootstrap --variant=minbase \
        --include=postgresql-15,python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "$(debian_mirror)" >&2
      as_root rm -rf "$rootfs/var/lib/apt/lists"/* "$rootfs/var/cache/apt"/*
      as_root tar -C "$rootfs" -c . | $cli import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        - "$STANDIN_BASE" >/dev/null
      as_root rm -rf "$rootfs"
    fi
    say "no registry: building a stand-in for $image from tests/containers/$name"
    local context
    context=$(mktemp -d)
    cp -a "tests/containers/$name/." "$context/"
    if [ "$name" = localstack ]; then
      # The tests' own LocalStack 0.14.3 (scripts/install-deps.sh), its packages copied in.
      local venv
      venv=$(dirname "$(dirname "$SQS2PG_TEST_LOCALSTACK")")
      cp -a "$venv"/lib/python3.*/site-packages "$context/site-packages"
      cp examples/login-queue-sample.jsonl "$context/"
    fi
    $cli build -t "localhost/$image:latest" "$context" >&2
    rm -rf "$context"
  done
}

build() {
  local cli
  cli=$(engine)
  [ "$cli" = podman ] && export CONTAINERS_CONF="$CACHE/containers.conf"
  rust_base "$cli"
  say "building $IMAGE with $cli"
  # As a user builds it (`docker build -t sqs2pg .`): the commit comes from .git's refs, or
  # from SQS2PG_GIT_COMMIT when it is set (a source archive has no .git).
  $cli build ${SQS2PG_GIT_COMMIT:+--build-arg "SQS2PG_GIT_COMMIT=$SQS2PG_GIT_COMMIT"} \
    -t "$IMAGE" . >&2
  local size
  size=$($cli image inspect "$IMAGE" --format '{{.Size}}')
  say "built $IMAGE ($((size / 1024 / 1024)) MiB): $($cli run --rm "$IMAGE" --version)"
}

# The image's tests (tests/it/container.rs, slow tier), against the servers the integration
# tests start, with the engine the image was built with.
test_image() {
  build
  local cli
  cli=$(engine)
  export SQS2PG_CONTAINER_ENGINE=$cli SQS2PG_IMAGE=$IMAGE
  [ "$cli" = podman ] && export CONTAINERS_CONF="$CACHE/containers.conf"
  eval "$(scripts/install-deps.sh)"
  if [ "$cli" = podman ]; then
    compose_images "$cli"
    cargo test --test it --locked -- --ignored --test-threads=1 container::
    docker_through_podman
  else
    # The manifest is played by `podman kube play`, the compose file in a podman pod and the
    # probes test on slirp4netns: with docker, the image test alone.
    say "docker: the image test; the probes, Kubernetes and compose tests need podman"
    cargo test --test it --locked -- --ignored --exact \
      container::the_image_sets_up_and_drains_the_sample_as_a_user_of_its_own
  fi
}

# The docker path, where this machine has the docker CLI but no docker daemon (as here): the
# docker CLI against podman's Docker-compatible API (`podman system service`) on a socket of
# its own. The image is built as a Docker user builds it (`docker build -t sqs2pg .`, this
# script's `build` with docker as the engine) and run with `docker run` by the image test.
# The client and the API are Docker's; the engine behind them is podman's (buildah builds).
docker_through_podman() (
  if ! command -v docker >/dev/null; then
    say "no docker CLI here: the docker path is not tried"
    return 0
  fi
  local sock="$CACHE/docker-api.sock" service
  rm -f "$sock"
  podman system service --time=0 "unix://$sock" >"$CACHE/docker-api.log" 2>&1 &
  service=$!
  trap 'kill "$service" 2>/dev/null; wait "$service" 2>/dev/null; rm -f "$sock"' EXIT
  export DOCKER_HOST="unix://$sock"
  # Bounded wait for the API to answer (a few seconds at most).
  local tries=0
  until docker info >/dev/null 2>&1; do
    tries=$((tries + 1))
    [ "$tries" -le 100 ] || die "podman's Docker API did not answer on $sock (see $CACHE/docker-api.log)"
    sleep 0.2
  done
  say "the docker path: the docker CLI against podman's Docker API on $sock"
  build
  SQS2PG_CONTAINER_ENGINE=docker SQS2PG_IMAGE=$IMAGE \
    cargo test --test it --locked -- --ignored --exact \
    container::the_image_sets_up_and_drains_the_sample_as_a_user_of_its_own
)

case "${1:-}" in
  build) build ;;
  test) test_image ;;
  *) die "usage: scripts/container.sh build|test" ;;
esac
