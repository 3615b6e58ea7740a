#!/usr/bin/env bash
# A throwaway local PostgreSQL for the ledger tests.
#   .ci/postgres.sh start DIR   -> prints a database URL on stdout, or exits non-zero
#   .ci/postgres.sh stop DIR
# Every failure is reported on stderr and left to the caller, which then runs the tests
# without PostgreSQL (they skip with a reason): a missing database must never fail CI.
set -uo pipefail
cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }

pg_bin() {  # newest installed binary of that name
  command -v "$1" 2>/dev/null && return
  ls /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | sort -V | tail -n 1
}

as_owner() {  # PostgreSQL refuses to run as root: run as its own user (or nobody)
  if [ "$(id -u)" -ne 0 ]; then "$@"; return; fi
  local user=postgres
  id "$user" >/dev/null 2>&1 || user=nobody
  runuser -u "$user" -- "$@"
}

if [ "$cmd" = stop ]; then
  [ -d "$dir/data" ] && as_owner "$(pg_bin pg_ctl)" -D "$dir/data" -m immediate stop >/dev/null 2>&1
  rm -rf "$dir"
  exit 0
fi

initdb=$(pg_bin initdb)
if [ -z "$initdb" ] && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "postgres.sh: installing PostgreSQL from Debian's packages" >&2
  timeout 600 bash -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
     apt-get install -y -qq --no-install-recommends postgresql' >/dev/null 2>&1
  initdb=$(pg_bin initdb)
fi
pg_ctl=$(pg_bin pg_ctl)
if [ -z "$initdb" ] || [ -z "$pg_ctl" ]; then
  echo "postgres.sh: no PostgreSQL binaries found" >&2
  exit 1
fi
mkdir -p "$dir" && chmod 755 "$dir"
[ "$(id -u)" -eq 0 ] && { id postgres >/dev/null 2>&1 && chown postgres "$dir" || chown nobody "$dir"; }
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
if ! as_owner "$initdb" -D "$dir/data" -A trust -U tokenmill -E UTF8 --no-sync >"$dir/initdb.log" 2>&1; then
  echo "postgres.sh: initdb failed:" >&2; tail -n 5 "$dir/initdb.log" >&2; exit 1
fi
# fsync off: a test database need not survive a power cut, and it saves seconds.
if ! as_owner "$pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
     -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" \
     start >/dev/null 2>&1; then
  echo "postgres.sh: the server did not start:" >&2; tail -n 5 "$dir/server.log" >&2; exit 1
fi
echo "postgresql://tokenmill@127.0.0.1:$port/postgres"
