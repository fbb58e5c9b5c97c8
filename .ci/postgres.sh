#!/usr/bin/env bash
# A throwaway PostgreSQL for parley's storage tests, on 127.0.0.1 only, with trust auth.
#
# Sourced (as .ci/run does): starts it, exports PARLEY_TEST_POSTGRES_URL and stops it when the
# sourcing shell exits (an EXIT trap, and a watchdog for a shell that is killed outright).
# Run (developers):   eval "$(.ci/postgres.sh)"   starts one that keeps running, prints the
# export line on stdout and how to stop it on stderr.
# Either way, a PARLEY_TEST_POSTGRES_URL that already answers is reused and nothing is started.
# Installs Debian's postgresql when no initdb is found (as root). The cluster lives in a temp
# directory owned by an unprivileged user (postgres refuses to run as root).

_parley_pg_bin() {
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$dir/initdb" ]; then echo "$dir"; return 0; fi
    done
    if command -v initdb >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v initdb)")"
        return 0
    fi
    return 1
}

_parley_pg_install() {
    if [ "$(id -u)" != 0 ]; then
        echo "postgres.sh: no initdb found; install PostgreSQL (apt-get install postgresql)" >&2
        return 1
    fi
    echo "postgres.sh: installing Debian's postgresql" >&2
    # Only our throwaway cluster should run: no "main" cluster started by the package.
    if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
        mkdir -p /etc/postgresql-common
        echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
    fi
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold postgresql >&2
}

_parley_pg_start() {
    local bin user dir port url
    bin=$(_parley_pg_bin) || { _parley_pg_install && bin=$(_parley_pg_bin); } || return 1
    if [ -n "${PARLEY_TEST_POSTGRES_URL:-}" ] \
        && "$bin/pg_isready" -q -d "$PARLEY_TEST_POSTGRES_URL" >/dev/null 2>&1; then
        echo "postgres.sh: reusing $PARLEY_TEST_POSTGRES_URL" >&2
        _PARLEY_PG_URL=$PARLEY_TEST_POSTGRES_URL
        _PARLEY_PG_STOP=""
        return 0
    fi
    # Run the server as an unprivileged user: ourselves, or (as root) postgres or a new one.
    local as=()
    if [ "$(id -u)" = 0 ]; then
        user=postgres
        if ! id "$user" >/dev/null 2>&1; then
            user=parley-pg
            id "$user" >/dev/null 2>&1 || useradd --system --no-create-home "$user"
        fi
        as=(runuser -u "$user" --)
    fi
    dir=$(mktemp -d /tmp/parley-pg.XXXXXX)
    [ -z "${user:-}" ] || chown "$user" "$dir"
    chmod 700 "$dir"
    "${as[@]}" "$bin/initdb" -D "$dir/data" -U parley -A trust -E UTF8 --locale=C --no-sync \
        >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; return 1; }
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    # Durability off: a test cluster is thrown away, and the tests create many databases.
    "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/data/server.log" -w -t 60 -s \
        -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir" \
        -o "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
        start >&2 || { cat "$dir/data/server.log" >&2; return 1; }
    local i
    for i in $(seq 1 60); do
        "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" && break
        [ "$i" = 60 ] && { echo "postgres.sh: server not ready" >&2; return 1; }
        sleep 0.5
    done
    url="postgresql://parley@127.0.0.1:$port/postgres"
    _PARLEY_PG_URL=$url
    _PARLEY_PG_STOP="${as[*]} $bin/pg_ctl -D $dir/data -m immediate -s stop"
    _PARLEY_PG_STOP+=" || kill -KILL \$(head -1 $dir/data/postmaster.pid); rm -rf $dir"
    echo "postgres.sh: PostgreSQL $("$bin/postgres" --version | awk '{print $3}') at $url" >&2
}

_parley_pg_stop() {
    if [ -n "${_PARLEY_PG_STOP:-}" ]; then
        bash -c "$_PARLEY_PG_STOP" >/dev/null 2>&1 || true
        _PARLEY_PG_STOP=""
    fi
}

if [ "${BASH_SOURCE[0]}" != "$0" ]; then
    # Sourced: the server lives as long as the sourcing shell.
    _parley_pg_start || return 1
    export PARLEY_TEST_POSTGRES_URL=$_PARLEY_PG_URL
    if [ -n "$_PARLEY_PG_STOP" ]; then
        trap _parley_pg_stop EXIT
        # A shell killed outright runs no trap: a watchdog in its own session stops the server.
        setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 2; done; bash -c "$2"' \
            parley-pg-watchdog "$$" "$_PARLEY_PG_STOP" </dev/null >/dev/null 2>&1 &
        disown
    fi
else
    set -euo pipefail
    _parley_pg_start
    echo "export PARLEY_TEST_POSTGRES_URL=$_PARLEY_PG_URL"
    if [ -n "$_PARLEY_PG_STOP" ]; then
        echo "postgres.sh: stop it with: $_PARLEY_PG_STOP" >&2
    fi
fi
