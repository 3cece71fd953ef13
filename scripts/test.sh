#!/usr/bin/env bash
# The test command: formatting, lints, then every test (unit, property and integration). The
# integration tests start their own PostgreSQL cluster and moto SQS server on free loopback
# ports (tests/it/harness.rs); this script only makes sure both are installed.
set -euo pipefail
cd "$(dirname "$0")/.."

SQS2PG_TEST_MOTO=$(scripts/install-deps.sh | tail -n 1)
export SQS2PG_TEST_MOTO

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --all-targets --locked
