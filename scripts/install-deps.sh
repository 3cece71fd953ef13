#!/usr/bin/env bash
# Installs what sqs2pg's quickstart, tests and CI need beyond the Rust toolchain, if missing:
#   - a PostgreSQL server (Debian's `postgresql` package: initdb, pg_ctl, postgres, psql)
#   - moto's SQS server (`moto[server]` from PyPI), the SQS implementation the tests talk to
#   - python3 (for moto) and openssl (the tests make a throwaway CA for TLS tests)
# Idempotent and quick when everything is present. Prints the moto_server command on its last
# line (callers export it as SQS2PG_TEST_MOTO).
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
echo "$moto"
