#!/usr/bin/env bash
# A throwaway one-node Ray cluster for parley's Ray Serve tests, on 127.0.0.1 only.
#
# Sourced (as .ci/run does, after the venv with the test extra exists): starts a head, exports
# PARLEY_TEST_RAY_ADDRESS (its GCS, HOST:PORT), PARLEY_TEST_RAY_CLIENT_ADDRESS (ray://HOST:PORT)
# and the variables that keep Ray on loopback, and stops the head when
# the sourcing shell exits (an EXIT trap, and a watchdog for a shell that is killed outright).
# Run (developers):   eval "$(.ci/ray.sh)"   starts one that keeps running, prints the export
# lines on stdout and how to stop it on stderr.
# Either way, a PARLEY_TEST_RAY_ADDRESS that already answers is reused and nothing is started.
#
# Installs nothing: Ray comes with parley's test extra (ray[serve]). It is looked for as
# $PARLEY_RAY, then .venv/bin/ray, then `ray` on PATH. Its Python must import parley, since
# the replicas build parley's engines: use the project's venv.
#
# Loopback: Ray swaps 127.0.0.1 for the machine's address ("remotely reachable") unless
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (one-node mode), and then binds every port it opens
# (GCS, raylet, object manager, Ray Client, agents) to 127.0.0.1. Usage stats are off and
# their report URL points at a closed loopback port; no dashboard, no Serve HTTP proxy.

_parley_ray_env() {
    export RAY_USAGE_STATS_ENABLED=0
    export RAY_USAGE_STATS_REPORT_URL=http://127.0.0.1:9/
    export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
    # A Ray call without a cluster must fail, not ray.init() a new local one.
    export RAY_ENABLE_AUTO_CONNECT=0
}

_parley_ray_bin() {
    local here
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    if [ -n "${PARLEY_RAY:-}" ] && [ -x "$PARLEY_RAY" ]; then echo "$PARLEY_RAY"; return 0; fi
    if [ -x "$here/.venv/bin/ray" ]; then echo "$here/.venv/bin/ray"; return 0; fi
    command -v ray 2>/dev/null && return 0
    echo "ray.sh: no ray found; install parley's test extra first (pip install -e '.[test]')" >&2
    return 1
}

_parley_ray_free_port() {
    "$1" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

_parley_ray_answers() {
    # Whether a GCS answers at $1 (HOST:PORT): a TCP connect is enough to tell.
    "$2" -c 'import socket, sys
h, p = sys.argv[1].rsplit(":", 1)
socket.create_connection((h, int(p)), timeout=2).close()' "$1" >/dev/null 2>&1
}

_parley_ray_start() {
    local ray python dir port client agent i
    _parley_ray_env
    ray=$(_parley_ray_bin) || return 1
    python=$(dirname "$ray")/python
    [ -x "$python" ] || python=python3
    if [ -n "${PARLEY_TEST_RAY_ADDRESS:-}" ] \
        && _parley_ray_answers "$PARLEY_TEST_RAY_ADDRESS" "$python"; then
        echo "ray.sh: reusing $PARLEY_TEST_RAY_ADDRESS" >&2
        _PARLEY_RAY_ADDRESS=$PARLEY_TEST_RAY_ADDRESS
        _PARLEY_RAY_CLIENT=${PARLEY_TEST_RAY_CLIENT_ADDRESS:-}
        _PARLEY_RAY_STOP=""
        return 0
    fi
    # A short path: Ray's socket paths live under it and must stay under 108 bytes.
    dir=$(mktemp -d /tmp/parley-ray.XXXXXX)
    port=$(_parley_ray_free_port "$python")
    client=$(_parley_ray_free_port "$python")
    # Ports Ray otherwise fixes (52365, 44217, 44227): free ones, so that two heads can run.
    agent=$(_parley_ray_free_port "$python")
    AUTOSCALER_METRIC_PORT=$(_parley_ray_free_port "$python")
    DASHBOARD_METRIC_PORT=$(_parley_ray_free_port "$python")
    export AUTOSCALER_METRIC_PORT DASHBOARD_METRIC_PORT
    # --block keeps `ray start` in the foreground as the parent of every Ray process; it runs
    # in a session of its own, whose process group is stopped as a whole.
    setsid "$ray" start --head --block --node-ip-address 127.0.0.1 --port "$port" \
        --ray-client-server-port "$client" --dashboard-agent-listen-port "$agent" \
        --include-dashboard=false --disable-usage-stats \
        --num-cpus "${PARLEY_RAY_CPUS:-2}" --temp-dir "$dir" \
        </dev/null >"$dir/start.log" 2>&1 &
    local pid=$!
    for i in $(seq 1 120); do
        if grep -q "Ray runtime started" "$dir/start.log" 2>/dev/null \
            && _parley_ray_answers "127.0.0.1:$port" "$python"; then
            break
        fi
        if ! kill -0 "$pid" 2>/dev/null || [ "$i" = 120 ]; then
            echo "ray.sh: the Ray head did not start:" >&2
            cat "$dir/start.log" >&2
            kill -TERM -- "-$pid" 2>/dev/null
            return 1
        fi
        sleep 0.5
    done
    _PARLEY_RAY_ADDRESS="127.0.0.1:$port"
    _PARLEY_RAY_CLIENT="ray://127.0.0.1:$client"
    # TERM, then (a throwaway cluster: no need to wait long) KILL whatever of the group is left;
    # the workers, in process groups of their own, exit when their raylet goes.
    _PARLEY_RAY_STOP="kill -TERM -- -$pid 2>/dev/null; for i in \$(seq 1 6); do"
    _PARLEY_RAY_STOP+=" kill -0 -- -$pid 2>/dev/null || break; sleep 0.5; done;"
    _PARLEY_RAY_STOP+=" kill -KILL -- -$pid 2>/dev/null; rm -rf $dir"
    echo "ray.sh: Ray $("$ray" --version 2>/dev/null | awk '{print $NF}') head at" \
        "$_PARLEY_RAY_ADDRESS (Ray Client 127.0.0.1:$client, logs in $dir)" >&2
}

_parley_ray_stop() {
    if [ -n "${_PARLEY_RAY_STOP:-}" ]; then
        bash -c "$_PARLEY_RAY_STOP" >/dev/null 2>&1 || true
        _PARLEY_RAY_STOP=""
    fi
}

if [ "${BASH_SOURCE[0]}" != "$0" ]; then
    # Sourced: the head lives as long as the sourcing shell.
    _parley_ray_start || return 1
    export PARLEY_TEST_RAY_ADDRESS=$_PARLEY_RAY_ADDRESS
    export PARLEY_TEST_RAY_CLIENT_ADDRESS=$_PARLEY_RAY_CLIENT
    if [ -n "$_PARLEY_RAY_STOP" ]; then
        # Chain an EXIT trap already set (postgres.sh sets one) rather than replace it.
        _parley_ray_prev_trap=$(trap -p EXIT | sed -E "s/^trap -- '(.*)' EXIT$/\1/")
        trap "_parley_ray_stop; ${_parley_ray_prev_trap:-:}" EXIT
        setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 2; done; bash -c "$2"' \
            parley-ray-watchdog "$$" "$_PARLEY_RAY_STOP" </dev/null >/dev/null 2>&1 &
        disown
    fi
else
    set -euo pipefail
    _parley_ray_start
    echo "export PARLEY_TEST_RAY_ADDRESS=$_PARLEY_RAY_ADDRESS"
    echo "export PARLEY_TEST_RAY_CLIENT_ADDRESS=$_PARLEY_RAY_CLIENT"
    echo "export RAY_USAGE_STATS_ENABLED=0 RAY_USAGE_STATS_REPORT_URL=http://127.0.0.1:9/"
    echo "export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_ENABLE_AUTO_CONNECT=0"
    if [ -n "$_PARLEY_RAY_STOP" ]; then
        echo "ray.sh: stop it with: $_PARLEY_RAY_STOP" >&2
    fi
fi
