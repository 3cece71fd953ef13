#!/usr/bin/env bash
# The test command: formatting, lints, then every test (unit, property and integration, then
# the slow volume tier). The integration tests start their own PostgreSQL cluster, moto SQS
# server, LocalStack 0.14.3 (the exercise's query-only SQS) and LocalStack 4.0.3 (volume
# tests) on free loopback ports (tests/it/harness/); this script only makes sure they are
# installed.
set -euo pipefail
cd "$(dirname "$0")/.."

deps=$(scripts/install-deps.sh)
eval "$deps"

echo "== module graph: no new cycle between top-level modules"
python3 scripts/module_graph.py --check
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo doc, warnings denied"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked --quiet
echo "== cargo test"
cargo test --all-targets --locked
# The slow tier: the volume tests (20,000 messages, several processes, a rate-limited server;
# tests/it/scale.rs), one at a time, since they compare timings. SQS2PG_SKIP_SLOW=1 skips it
# while iterating; CI always runs it.
if [ -z "${SQS2PG_SKIP_SLOW:-}" ]; then
  echo "== cargo test, slow tier"
  cargo test --test it --locked -- --ignored --test-threads=1 \
    --skip resilience::extensions_that_never_answer_hold_up_no_lease --skip container::
  # Last and alone: at a 2 s visibility timeout, a machine still busy with the fast tier's
  # servers shutting down can delay calls past their lease with no fault injected.
  cargo test --test it --locked -- --ignored --exact \
    resilience::extensions_that_never_answer_hold_up_no_lease
  # The container image, built from the Dockerfile (docker, or podman with base images made
  # here) and run against the tests' servers. SQS2PG_SKIP_CONTAINER=1 skips it.
  # It needs root, or a user with sudo (base images made with debootstrap) and subordinate
  # ids (rootless podman); where neither is so, it is skipped with a message saying why.
  if [ -n "${SQS2PG_SKIP_CONTAINER:-}" ]; then
    echo "== container image: skipped (SQS2PG_SKIP_CONTAINER)"
  elif [ "$(id -u)" != 0 ] && ! { sudo -n true 2>/dev/null && grep -q "^$(id -un):" /etc/subuid 2>/dev/null; }; then
    echo "== container image: skipped: as $(id -un), it needs passwordless sudo and subordinate ids" \
         "in /etc/subuid and /etc/subgid for rootless podman (or run the tests as root)"
  else
    echo "== container image: scripts/container.sh test"
    scripts/container.sh test
  fi
fi
