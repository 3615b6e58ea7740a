#!/usr/bin/env bash
# A throwaway local Redis for the shared rate-limit tests.
#   .ci/redis.sh start DIR   -> prints a Redis URL on stdout, or exits non-zero
#   .ci/redis.sh stop DIR
# As postgres.sh: every failure is reported on stderr and left to the caller, whose tests
# then skip with the reason; a missing Redis must never fail CI.
set -uo pipefail
cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }

if [ "$cmd" = stop ]; then
  [ -f "$dir/redis.pid" ] && kill "$(cat "$dir/redis.pid")" 2>/dev/null
  rm -rf "$dir"
  exit 0
fi

if ! command -v redis-server >/dev/null && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "redis.sh: installing redis-server from Debian's packages" >&2
  timeout 600 bash -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
     apt-get install -y -qq --no-install-recommends redis-server' >/dev/null 2>&1
fi
if ! command -v redis-server >/dev/null; then
  echo "redis.sh: no redis-server found" >&2
  exit 1
fi
mkdir -p "$dir"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# In memory only, loopback only: a test server that keeps nothing.
if ! redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
     --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --dir "$dir"; then
  echo "redis.sh: redis-server did not start" >&2; exit 1
fi
for _ in $(seq 50); do
  redis-cli -p "$port" ping >/dev/null 2>&1 && { echo "redis://127.0.0.1:$port/0"; exit 0; }
  sleep 0.1
done
echo "redis.sh: redis-server did not answer:" >&2; tail -n 5 "$dir/redis.log" >&2
exit 1
