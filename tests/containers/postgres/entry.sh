#!/bin/sh
# PostgreSQL 15 on 5432 for any address, user and password postgres, with the analysts' table.
set -eu
data=/var/lib/postgresql/standin
if [ ! -s "$data/PG_VERSION" ]; then
  echo postgres > /tmp/password
  initdb -D "$data" -U postgres --pwfile=/tmp/password -A scram-sha-256 -E UTF8 --locale=C >/dev/null
  rm /tmp/password
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$data/pg_hba.conf"
  postgres --single -D "$data" postgres >/dev/null <<'SQL'
CREATE TABLE IF NOT EXISTS user_logins(
    user_id varchar(128),
    device_type varchar(32),
    masked_ip varchar(256),
    masked_device_id varchar(256),
    locale varchar(32),
    app_version integer,
    create_date date
);
SQL
fi
exec postgres -D "$data" -c listen_addresses='*' -c unix_socket_directories=/tmp
