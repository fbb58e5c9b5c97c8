#!/usr/bin/env bash
# A throwaway Redis for parley's shared-state tests, on 127.0.0.1 only, with no persistence.
#
# Sourced (as .ci/run does): starts it, exports PARLEY_TEST_REDIS_URL and stops it when the
# sourcing shell exits (an EXIT trap, and a watchdog for a shell that is killed outright).
# Run (developers):   eval "$(.ci/redis.sh)"   starts one that keeps running, prints the
# export line on stdout and how to stop it on stderr.
# Either way, a PARLEY_TEST_REDIS_URL that already answers is reused and nothing is started.
# Installs Debian's redis-server when none is found (as root), without letting the package
# start its own system-wide server.

_parley_redis_install() {
    if [ "$(id -u)" != 0 ]; then
        echo "redis.sh: no redis-server found; install it (apt-get install redis-server)" >&2
        return 1
    fi
    echo "redis.sh: installing Debian's redis-server" >&2
    # Only our throwaway server should run: a policy-rc.d that says 101 keeps the package's
    # init script from starting one on 6379 (containers usually have one already).
    local policy=/usr/sbin/policy-rc.d made=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made=1
    fi
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold redis-server >&2
    local rc=$?
    [ -z "$made" ] || rm -f "$policy"
    return $rc
}

_parley_redis_ping() {
    # True when the server at URL $1 answers PING.
    if command -v redis-cli >/dev/null 2>&1; then
        [ "$(redis-cli -u "$1" ping 2>/dev/null)" = PONG ]
    else
        python3 - "$1" <<'EOF' >/dev/null 2>&1
import socket, sys
from urllib.parse import urlsplit
u = urlsplit(sys.argv[1])
with socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=2) as s:
    s.sendall(b"PING\r\n")
    sys.exit(0 if s.recv(64).startswith(b"+PONG") else 1)
EOF
    fi
}

_parley_redis_start() {
    local bin dir port url
    if [ -n "${PARLEY_TEST_REDIS_URL:-}" ] && _parley_redis_ping "$PARLEY_TEST_REDIS_URL"; then
        echo "redis.sh: reusing $PARLEY_TEST_REDIS_URL" >&2
        _PARLEY_REDIS_URL=$PARLEY_TEST_REDIS_URL
        _PARLEY_REDIS_STOP=""
        return 0
    fi
    bin=$(command -v redis-server) \
        || { _parley_redis_install && bin=$(command -v redis-server); } || return 1
    dir=$(mktemp -d /tmp/parley-redis.XXXXXX)
    chmod 700 "$dir"
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    # Loopback only, no RDB snapshots or AOF (a test server is thrown away), no unix socket.
    "$bin" --bind 127.0.0.1 --port "$port" --protected-mode yes --save "" --appendonly no \
        --dir "$dir" --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
        --databases 16 >&2 || { cat "$dir/redis.log" >&2 2>/dev/null; return 1; }
    url="redis://127.0.0.1:$port/0"
    local i
    for i in $(seq 1 60); do
        _parley_redis_ping "$url" && break
        [ "$i" = 60 ] && { echo "redis.sh: server not ready" >&2; cat "$dir/redis.log" >&2; return 1; }
        sleep 0.25
    done
    _PARLEY_REDIS_URL=$url
    _PARLEY_REDIS_STOP="kill -TERM \$(cat $dir/redis.pid) 2>/dev/null; sleep 0.5;"
    _PARLEY_REDIS_STOP+=" kill -KILL \$(cat $dir/redis.pid 2>/dev/null) 2>/dev/null; rm -rf $dir"
    echo "redis.sh: Redis $("$bin" --version | awk '{print $3}' | sed 's/^v=//') at $url" >&2
}

_parley_redis_stop() {
    if [ -n "${_PARLEY_REDIS_STOP:-}" ]; then
        bash -c "$_PARLEY_REDIS_STOP" >/dev/null 2>&1 || true
        _PARLEY_REDIS_STOP=""
    fi
}

if [ "${BASH_SOURCE[0]}" != "$0" ]; then
    # Sourced: the server lives as long as the sourcing shell.
    _parley_redis_start || return 1
    export PARLEY_TEST_REDIS_URL=$_PARLEY_REDIS_URL
    if [ -n "$_PARLEY_REDIS_STOP" ]; then
        # Chained after any EXIT trap already set (.ci/postgres.sh sets one before us).
        _parley_redis_prev_trap=$(trap -p EXIT | sed -E "s/^trap -- '(.*)' EXIT$/\1/")
        trap "_parley_redis_stop${_parley_redis_prev_trap:+; $_parley_redis_prev_trap}" EXIT
        # A shell killed outright runs no trap: a watchdog in its own session stops the server.
        setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 2; done; bash -c "$2"' \
            parley-redis-watchdog "$$" "$_PARLEY_REDIS_STOP" </dev/null >/dev/null 2>&1 &
        disown
    fi
else
    set -euo pipefail
    _parley_redis_start
    echo "export PARLEY_TEST_REDIS_URL=$_PARLEY_REDIS_URL"
    if [ -n "$_PARLEY_REDIS_STOP" ]; then
        echo "redis.sh: stop it with: $_PARLEY_REDIS_STOP" >&2
    fi
fi
