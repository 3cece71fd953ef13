#!/usr/bin/env bash
# The test command: formatting, lints, then every test (unit, property and integration). The
# integration tests start their own PostgreSQL cluster, moto SQS server, LocalStack 0.14.3 (the
# exercise's query-only SQS) and LocalStack 4.0.3 (volume tests) on free loopback ports
# (tests/it/harness.rs); this script only makes sure they are installed.
set -euo pipefail
cd "$(dirname "$0")/.."

deps=$(scripts/install-deps.sh)
eval "$deps"

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --all-targets --locked
