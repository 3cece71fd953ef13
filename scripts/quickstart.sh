#!/usr/bin/env bash
# sqs2pg quickstart: from a fresh Debian machine with the Rust toolchain to masked logins in
# PostgreSQL, with throwaway local services.
#
#   scripts/quickstart.sh          install what is missing, build, start PostgreSQL and a moto SQS
#                                  server on free loopback ports, send the 100 sample messages,
#                                  run `sqs2pg setup` and `sqs2pg drain`, show some rows
#   scripts/quickstart.sh --legacy the same on LocalStack 0.14.3 instead of moto: the exercise's
#                                  own SQS, which speaks only the query protocol (sqs2pg notices
#                                  and switches by itself; no flag needed)
#   scripts/quickstart.sh stop     stop the services and remove their data
#
# Everything lives in .quickstart/ (git-ignored). Re-running starts from a clean database and
# queue but keeps the masking key, so tokens stay comparable between runs.
#
# PostgreSQL refuses to run as root, so for root the server runs as the `postgres` user, which
# cannot enter a clone under /root (mode 700) or under any directory others cannot traverse.
# Its cluster then lives in a directory of its own under /tmp (named in .quickstart/pgroot, and
# removed by `stop`); for any other user it lives in .quickstart/.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
qs="$repo/.quickstart"

is_root() { [ "$(id -u)" = 0 ]; }
# From /, which the postgres user can enter (this clone may not be).
as_postgres() { if is_root; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi; }
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Where this clone's cluster lives (data, socket, log): see the note at the top.
pg_root() {
  if [ -s "$qs/pgroot" ]; then cat "$qs/pgroot"; elif is_root; then echo ""; else echo "$qs/pg"; fi
}

stop() {
  local root
  root=$(pg_root)
  # A cluster started by an older version of this script, inside the clone.
  if [ -f "$qs/pgdata/postmaster.pid" ]; then
    as_postgres "$(pg_bin)/pg_ctl" -D "$qs/pgdata" -m fast stop >/dev/null 2>&1 || true
  fi
  if [ -n "$root" ] && [ -f "$root/data/postmaster.pid" ]; then
    as_postgres "$(pg_bin)/pg_ctl" -D "$root/data" -m fast stop >/dev/null 2>&1 || true
  fi
  # Only a directory this script made (its name says so) is removed.
  case "$root" in
    */sqs2pg-quickstart.*|"$qs/pg") rm -rf "$root" ;;
  esac
  if [ -f "$qs/sqs.pid" ]; then
    # The SQS server runs in its own process group (LocalStack starts helpers).
    pid=$(cat "$qs/sqs.pid")
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$qs/sqs.pid"
  fi
  rm -rf "$qs/pgroot" "$qs/pgdata" "$qs/env" "$qs/localstack"
}

case "${1:-}" in
  stop)
    stop
    echo "quickstart services stopped"
    exit 0
    ;;
  --legacy) legacy=1 ;;
  "") legacy="" ;;
  *) echo "usage: scripts/quickstart.sh [--legacy | stop]" >&2; exit 2 ;;
esac

if [ -n "$legacy" ]; then
  deps=$(SQS2PG_SKIP_LOCALSTACK4=1 scripts/install-deps.sh)
else
  deps=$(SQS2PG_SKIP_LOCALSTACK=1 scripts/install-deps.sh)
fi
eval "$deps"
moto=$SQS2PG_TEST_MOTO
localstack=$SQS2PG_TEST_LOCALSTACK
echo "== building sqs2pg (release)"
cargo build --release --locked --quiet
bin="${CARGO_TARGET_DIR:-$repo/target}/release/sqs2pg"

stop
mkdir -p "$qs"
if is_root; then
  # A directory the postgres user owns, wherever this clone is.
  # /tmp, not $TMPDIR: that could be under /root too.
  pg=$(mktemp -d /tmp/sqs2pg-quickstart.XXXXXX)
  chmod 700 "$pg"
  chown postgres: "$pg"
else
  pg="$qs/pg"
  mkdir -p "$pg"
fi
echo "$pg" >"$qs/pgroot"

echo "== starting PostgreSQL (cluster in $pg)"
pg_port=$(free_port)
as_postgres "$(pg_bin)/initdb" -D "$pg/data" -U postgres --auth=trust -E UTF8 --no-instructions >/dev/null
as_postgres "$(pg_bin)/pg_ctl" -D "$pg/data" -l "$pg/postgres.log" -w \
  -o "-p $pg_port -k $pg -c listen_addresses=127.0.0.1" start >/dev/null

sqs_port=$(free_port)
if [ -n "$legacy" ]; then
  echo "== starting LocalStack 0.14.3 (SQS, query protocol only)"
  mkdir -p "$qs/localstack"
  SERVICES=sqs EDGE_PORT=$sqs_port EDGE_BIND_HOST=127.0.0.1 HOSTNAME_EXTERNAL=127.0.0.1 \
    LOCALSTACK_HOSTNAME=127.0.0.1 DISABLE_EVENTS=1 SKIP_SSL_CERT_DOWNLOAD=1 DNS_ADDRESS=0 \
    EAGER_SERVICE_LOADING=1 TMPDIR="$qs/localstack" \
    setsid "$localstack" start --host --no-banner >"$qs/localstack.log" 2>&1 &
  echo $! >"$qs/sqs.pid"
  for _ in $(seq 1 240); do grep -qx 'Ready.' "$qs/localstack.log" && break; sleep 0.5; done
  grep -qx 'Ready.' "$qs/localstack.log" || { echo "LocalStack did not start; see $qs/localstack.log" >&2; exit 1; }
else
  echo "== starting moto SQS server"
  MOTO_ACCOUNT_ID=000000000000 setsid "$moto" -H 127.0.0.1 -p "$sqs_port" >"$qs/moto.log" 2>&1 &
  echo $! >"$qs/sqs.pid"
  for _ in $(seq 1 120); do
    (exec 3<>"/dev/tcp/127.0.0.1/$sqs_port") 2>/dev/null && break
    sleep 0.5
  done
fi

if [ ! -s "$qs/mask.key" ]; then
  (umask 077 && "$bin" keygen >"$qs/mask.key")
fi

cat >"$qs/env" <<ENV
export DATABASE_URL='postgres://postgres@127.0.0.1:$pg_port/postgres?sslmode=disable'
export SQS2PG_QUEUE_URL='http://127.0.0.1:$sqs_port/000000000000/login-queue'
export SQS2PG_MASK_KEY_FILE='$qs/mask.key'
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
ENV
# shellcheck disable=SC1091
. "$qs/env"

echo "== sqs2pg send (100 sample messages)"
"$bin" send --create-queue --file examples/login-queue-sample.jsonl
echo "== sqs2pg setup"
"$bin" setup
echo "== sqs2pg drain"
"$bin" drain

echo "== a few rows of public.user_logins"
psql "$DATABASE_URL" -c "SELECT user_id, device_type, masked_ip, masked_device_id, locale, app_version,
  sqs2pg.app_version_text(app_version) AS version, create_date FROM public.user_logins LIMIT 5"
psql "$DATABASE_URL" -c "SELECT message_id, reason, detail FROM sqs2pg.rejected_messages"

cat <<DONE

Done. To look around:
  . .quickstart/env && psql "\$DATABASE_URL"
  ${bin#"$repo"/} --help
To stop the services and remove their data:
  scripts/quickstart.sh stop
DONE
