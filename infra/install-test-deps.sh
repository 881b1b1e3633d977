#!/usr/bin/env bash
# Install the real Prometheus and Alertmanager binaries the integration tests run on loopback.
#
# Idempotent: does nothing when both binaries are on PATH. Otherwise installs Debian's packages
# (needs root) with service starts forbidden by a temporary policy-rc.d, then makes sure no
# Debian-started daemon is left holding the default ports 9090/9093. Prints one line.
set -euo pipefail

PACKAGES=(prometheus prometheus-alertmanager)
export PATH="$PATH:/usr/sbin:/sbin:/usr/bin"

# Debian names the Alertmanager binary prometheus-alertmanager; upstream calls it alertmanager.
have_binaries() {
    command -v prometheus >/dev/null 2>&1 &&
        { command -v alertmanager >/dev/null 2>&1 || command -v prometheus-alertmanager >/dev/null 2>&1; }
}
alertmanager_binary() {
    command -v alertmanager 2>/dev/null || command -v prometheus-alertmanager
}

if have_binaries; then
    echo "install-test-deps: prometheus and alertmanager already installed; nothing to do"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: prometheus and/or alertmanager missing; as root run" \
        "'apt-get install ${PACKAGES[*]}' (Debian packages) or run this script with sudo" >&2
    exit 1
fi

started=$(date +%s)
policy=/usr/sbin/policy-rc.d
saved=""
if [ -e "$policy" ]; then
    saved=$(mktemp)
    cp -p "$policy" "$saved"
fi
restore_policy() {
    if [ -n "$saved" ]; then
        mv -f "$saved" "$policy"
    else
        rm -f "$policy"
    fi
}
trap restore_policy EXIT
# Exit 101 = "action forbidden": invoke-rc.d and deb-systemd-invoke skip starting services.
printf '#!/bin/sh\nexit 101\n' >"$policy"
chmod 755 "$policy"

log=$(mktemp)
if ! {
    apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${PACKAGES[@]}"
} >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "install-test-deps: installing ${PACKAGES[*]} failed (log above)" >&2
    exit 1
fi
rm -f "$log"

# Belt and braces: if a service was started anyway (a policy-rc.d-unaware init), stop it, so
# that nothing of Debian's holds 9090/9093 while the tests run their own instances.
for service in prometheus prometheus-alertmanager; do
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl disable --now "$service" >/dev/null 2>&1 || true
    elif [ -x "/etc/init.d/$service" ]; then
        "/etc/init.d/$service" stop >/dev/null 2>&1 || true
    fi
done
daemon_uid=$(id -u prometheus 2>/dev/null || echo none)
for binary in /usr/bin/prometheus /usr/bin/prometheus-alertmanager; do
    for pid in $(pgrep -x -f "$binary( .*)?" 2>/dev/null || true); do
        # Only daemons run as the packages' system user: never a test's own instance.
        if [ "$(ps -o uid= -p "$pid" 2>/dev/null | tr -d ' ')" = "$daemon_uid" ]; then
            kill "$pid" 2>/dev/null || true
        fi
    done
done

if ! have_binaries; then
    echo "install-test-deps: installed ${PACKAGES[*]} but a binary is still missing" >&2
    exit 1
fi
version_of() { "$1" --version 2>&1 | head -n1 | awk '{print $3}'; }
echo "install-test-deps: installed ${PACKAGES[*]} (prometheus $(version_of prometheus)," \
    "alertmanager $(version_of "$(alertmanager_binary)")) in $(($(date +%s) - started))s;" \
    "service starts were suppressed"
