#!/usr/bin/env bash
# A throwaway PostgreSQL server for the registry tests and benchmark (the Debian package's binaries).
#   scripts/postgres.sh install        apt-get install postgresql when its binaries are missing (as root)
#   scripts/postgres.sh start DIR      initdb in DIR/data, start on a free 127.0.0.1 port; prints the URL
#   scripts/postgres.sh stop DIR       stop that server (DIR can then be deleted)
# PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user (runuser).
set -euo pipefail
cmd=${1:-}
bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
case "$cmd" in
  install)
    if [ -z "$(bindir)" ] || [ ! -x "$(bindir)/initdb" ]; then
      if [ "$(id -u)" != 0 ]; then echo "postgres.sh: PostgreSQL is not installed and we are not root" >&2; exit 1; fi
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null; }
    fi
    echo "postgres.sh: PostgreSQL binaries in $(bindir)" >&2
    ;;
  start|stop)
    dir=${2:?usage: postgres.sh $cmd DIR}
    bin=$(bindir)
    [ -n "$bin" ] || { echo "postgres.sh: no PostgreSQL binaries under /usr/lib/postgresql (run: postgres.sh install)" >&2; exit 1; }
    run=()
    if [ "$(id -u)" = 0 ]; then
      id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql postgres
      run=(runuser -u postgres --)
    fi
    if [ "$cmd" = stop ]; then
      "${run[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
      exit 0
    fi
    mkdir -p "$dir"
    chmod 755 "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "${run[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; exit 1; }
    "${run[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=${PG_FSYNC:-off} -c max_connections=60" start >/dev/null \
      || { cat "$dir/server.log" >&2; exit 1; }
    echo "postgresql://postgres@127.0.0.1:$port/postgres"
    ;;
  *) echo "usage: postgres.sh install | start DIR | stop DIR" >&2; exit 2 ;;
esac
