#!/usr/bin/env bash
# Make a Docker engine answer on this machine, for the tests that build and run infra/'s images.
#
# Idempotent, in three steps, each skipped when already done:
#   1. install Debian's docker.io (dockerd, containerd, runc) if dockerd is missing, with service
#      starts forbidden by a temporary policy-rc.d, so that only step 2 ever starts the engine;
#   2. start dockerd in the background (pidfile /var/run/docker.pid, log /var/log/changeguard-dockerd.log)
#      unless an engine already answers;
#   3. wait until `docker info` works.
# Needs root for steps 1 and 2. Prints what it did; on failure, the tail of the log and exit 1.
# Nothing is pulled: the images changeguard builds are FROM scratch (no registry is reachable).
set -euo pipefail

export PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
PIDFILE=/var/run/docker.pid
LOG=/var/log/changeguard-dockerd.log
WAIT_SECONDS=${CHANGEGUARD_DOCKER_WAIT:-60}

say() { echo "docker-engine: $*"; }
die() {
    echo "docker-engine: $*" >&2
    exit 1
}

# The engine's own client: Debian's, beside dockerd, rather than any other `docker` on PATH.
docker_client() {
    if [ -x /usr/bin/docker ]; then echo /usr/bin/docker; else command -v docker; fi
}
engine_answers() {
    local client
    client=$(docker_client 2>/dev/null) || return 1
    [ -n "$client" ] && "$client" info >/dev/null 2>&1
}

started=$(date +%s)

if engine_answers; then
    say "engine already running ($("$(docker_client)" version --format '{{.Server.Version}}'))"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || die "no Docker engine answers and installing or starting one needs root;" \
    "as root run: bash infra/docker-engine.sh"

# 1. install
if ! command -v dockerd >/dev/null 2>&1; then
    policy=/usr/sbin/policy-rc.d
    saved=""
    if [ -e "$policy" ]; then
        saved=$(mktemp)
        cp -p "$policy" "$saved"
    fi
    restore_policy() {
        if [ -n "$saved" ]; then mv -f "$saved" "$policy"; else rm -f "$policy"; fi
    }
    trap restore_policy EXIT
    # Exit 101 = "action forbidden": invoke-rc.d and deb-systemd-invoke skip starting services.
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    apt_log=$(mktemp)
    if ! {
        apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold docker.io
    } >"$apt_log" 2>&1; then
        tail -n 30 "$apt_log" >&2
        die "installing docker.io failed (log above)"
    fi
    rm -f "$apt_log"
    restore_policy
    trap - EXIT
    command -v dockerd >/dev/null 2>&1 || die "installed docker.io but dockerd is still missing"
    say "installed docker.io $(dpkg-query -W -f '${Version}' docker.io) in $(($(date +%s) - started))s"
fi

# 2. start, unless one of ours is already on its way up
running_pid=""
if [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    running_pid=$(cat "$PIDFILE")
    say "dockerd (pid $running_pid) is running but does not answer yet; waiting"
else
    rm -f "$PIDFILE"
    # setsid: the engine outlives this script and the test session that called it, and a
    # Ctrl-C in the caller's terminal does not reach it.
    setsid dockerd --pidfile "$PIDFILE" >>"$LOG" 2>&1 </dev/null &
    running_pid=$!
    say "started dockerd (pid $running_pid, log $LOG)"
fi

# 3. wait
deadline=$(($(date +%s) + WAIT_SECONDS))
until engine_answers; do
    if ! kill -0 "$running_pid" 2>/dev/null; then
        tail -n 30 "$LOG" >&2
        die "dockerd exited (log above)"
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
        tail -n 30 "$LOG" >&2
        die "dockerd did not answer within ${WAIT_SECONDS}s (log above)"
    fi
    sleep 0.5
done
say "engine $("$(docker_client)" version --format '{{.Server.Version}}') answers;" \
    "ready in $(($(date +%s) - started))s"
