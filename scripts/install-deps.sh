#!/usr/bin/env bash
# Installs what sqs2pg's quickstart, tests and CI need beyond the Rust toolchain, if missing:
#   - a PostgreSQL server (Debian's `postgresql` package: initdb, pg_ctl, postgres, psql)
#   - moto's SQS server (`moto[server]` from PyPI), the SQS implementation the tests talk to
#   - python3 (for moto) and openssl (the tests make a throwaway CA for TLS tests)
#   - chromium (Debian's package), headless, to render the HTML report in a test
#   - LocalStack 0.14.3, the exercise's own query-protocol-only SQS, in its own virtualenv from
#     the pinned package set in scripts/pins (a plain `pip install localstack==0.14.3` does not run)
#   - LocalStack 4.0.3, for the volume tests (pinned set in scripts/pins)
# Idempotent and quick when everything is present. Prints, on stdout, shell lines that export
# the commands the tests use (callers run `eval "$(scripts/install-deps.sh)"`):
#   SQS2PG_TEST_MOTO         moto_server
#   SQS2PG_TEST_LOCALSTACK   LocalStack 0.14.3's `localstack`
#   SQS2PG_TEST_LOCALSTACK4  LocalStack 4.0.3's `python` (run as `python -m localstack.runtime.main`)
# SQS2PG_SKIP_LOCALSTACK=1 skips both LocalStacks, SQS2PG_SKIP_LOCALSTACK4=1 only 4.0.3 (skipped
# ones print empty variables).
set -euo pipefail

MOTO_VERSION=5.2.1
log() { echo "install-deps: $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  if [ -z "${apt_updated:-}" ]; then as_root apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}
command -v python3 >/dev/null 2>&1 || { log "installing python3"; apt_install python3 python3-venv; }
command -v openssl >/dev/null 2>&1 || { log "installing openssl"; apt_install openssl; }

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  log "installing PostgreSQL server from apt"
  apt_install postgresql
fi
command -v psql >/dev/null 2>&1 || apt_install postgresql-client
# Headless Chromium renders the HTML report in its test.
command -v chromium >/dev/null 2>&1 || { log "installing chromium"; apt_install chromium; }

moto=""
if command -v moto_server >/dev/null 2>&1; then
  moto=$(command -v moto_server)
else
  venv="${SQS2PG_TOOLS_DIR:-$HOME/.cache/sqs2pg}/moto-venv"
  if [ ! -x "$venv/bin/moto_server" ]; then
    log "installing moto[server]==$MOTO_VERSION into $venv"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
      apt_install python3-venv
      rm -rf "$venv"
      python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install -q "moto[server]==$MOTO_VERSION"
  fi
  moto="$venv/bin/moto_server"
fi
printf 'export SQS2PG_TEST_MOTO=%q\n' "$moto"

# A virtualenv at $2 from the pin file $3 (for the log: $1), built when missing or when the pins
# changed since it was built.
venv_from_pins() {
  local what=$1 venv=$2 pins=$3
  if [ -x "$venv/bin/python" ] && cmp -s "$pins" "$venv/pins.txt"; then return; fi
  log "installing $what (pinned set) into $venv"
  rm -rf "$venv"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    apt_install python3-venv
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q 'setuptools<70' wheel
  "$venv/bin/pip" install -q --no-build-isolation -r "$pins"
  cp "$pins" "$venv/pins.txt"
}
tools="${SQS2PG_TOOLS_DIR:-$HOME/.cache/sqs2pg}"
pin_dir="$(cd "$(dirname "$0")" && pwd)/pins"

localstack=""
if [ -z "${SQS2PG_SKIP_LOCALSTACK:-}" ]; then
  venv="$tools/localstack-0.14.3-venv"
  venv_from_pins "LocalStack 0.14.3" "$venv" "$pin_dir/localstack-0.14.3-requirements.txt"
  # Without this placeholder LocalStack downloads a Java jar at start, even for SQS alone.
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  mkdir -p "$site/localstack/infra"
  touch "$site/localstack/infra/localstack-utils-fat.jar"
  localstack="$venv/bin/localstack"
fi
printf 'export SQS2PG_TEST_LOCALSTACK=%q\n' "$localstack"

localstack4=""
if [ -z "${SQS2PG_SKIP_LOCALSTACK:-}${SQS2PG_SKIP_LOCALSTACK4:-}" ]; then
  venv="$tools/localstack-4.0.3-venv"
  venv_from_pins "LocalStack 4.0.3" "$venv" "$pin_dir/localstack-4.0.3-requirements.txt"
  localstack4="$venv/bin/python"
fi
printf 'export SQS2PG_TEST_LOCALSTACK4=%q\n' "$localstack4"
