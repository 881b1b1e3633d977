#!/usr/bin/env bash
# Install the real servers the integration tests run on loopback: Prometheus, Alertmanager, and
# PostgreSQL (the audit store's production option); and Debian's Chromium, which the end-to-end
# test (tests/e2e) drives headless through Playwright, since Playwright's own browser downloads are
# impossible here (fonts-liberation comes along so its screenshots are legible); and Debian's
# openssh-client, whose real ssh-keygen makes the keys and SSH signatures of the verified-identity
# tests (tests/integration/test_identity.py).
#
# Idempotent: installs only what is missing, with Debian's packages (needs root) and service starts
# forbidden by a temporary policy-rc.d. Then makes sure nothing Debian started is left running:
# no Prometheus/Alertmanager daemon on 9090/9093, and no Debian PostgreSQL cluster (the tests
# initdb and run their own clusters on free ports; Debian's are stopped and set to start manually).
# Prints what it did.
set -euo pipefail

export PATH="$PATH:/usr/sbin:/sbin:/usr/bin"
# The path tests/e2e hands Playwright as executable_path.
CHROMIUM=/usr/bin/chromium

# Debian names the Alertmanager binary prometheus-alertmanager; upstream calls it alertmanager.
alertmanager_binary() {
    command -v alertmanager 2>/dev/null || command -v prometheus-alertmanager 2>/dev/null
}
# Debian keeps the PostgreSQL server off PATH, in /usr/lib/postgresql/VERSION/bin.
postgres_bindir() {
    local found="" dir
    for dir in /usr/lib/postgresql/*/bin; do
        if [ -x "$dir/postgres" ] && [ -x "$dir/initdb" ]; then
            found="$dir"
        fi
    done
    [ -n "$found" ] && echo "$found"
}

missing_packages() {
    command -v prometheus >/dev/null 2>&1 || echo prometheus
    alertmanager_binary >/dev/null || echo prometheus-alertmanager
    postgres_bindir >/dev/null || echo postgresql
    [ -x "$CHROMIUM" ] || echo chromium
    dpkg -s fonts-liberation >/dev/null 2>&1 || echo fonts-liberation
    command -v ssh-keygen >/dev/null 2>&1 || echo openssh-client
}

# Stop every Debian-managed PostgreSQL cluster and keep it from starting at boot. Only clusters
# pg_lsclusters knows (/etc/postgresql/...) are touched, never a test's own initdb'd cluster.
done_notes=()
quiet_debian_clusters() {
    command -v pg_lsclusters >/dev/null 2>&1 || return 0
    local version name port status rest conf
    while read -r version name port status rest; do
        [ -n "$version" ] || continue
        conf="/etc/postgresql/$version/$name/start.conf"
        if [ "$(id -u)" -ne 0 ]; then
            case "$status" in
            online*)
                echo "install-test-deps: warning: Debian cluster $version/$name is running on port" \
                    "$port; as root run 'pg_ctlcluster $version $name stop'" >&2
                ;;
            esac
            continue
        fi
        if [ -f "$conf" ] && grep -qx 'auto' "$conf"; then
            sed -i 's/^auto$/manual/' "$conf"
            done_notes+=("set Debian cluster $version/$name to start manually")
        fi
        case "$status" in
        online*)
            pg_ctlcluster "$version" "$name" stop -m fast >/dev/null 2>&1 || true
            done_notes+=("stopped Debian cluster $version/$name (port $port)")
            ;;
        esac
    done < <(pg_lsclusters --no-header 2>/dev/null || true)
}

report_notes() {
    local note
    for note in "${done_notes[@]}"; do
        echo "install-test-deps: $note"
    done
}

mapfile -t PACKAGES < <(missing_packages)

if [ ${#PACKAGES[@]} -eq 0 ]; then
    quiet_debian_clusters
    echo "install-test-deps: prometheus, alertmanager, postgresql, chromium, fonts-liberation" \
        "and openssh-client already installed; nothing to install"
    report_notes
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: missing ${PACKAGES[*]}; as root run" \
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
# that nothing of Debian's holds 9090/9093 or a PostgreSQL port while the tests run their own.
for service in prometheus prometheus-alertmanager postgresql; do
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
quiet_debian_clusters

mapfile -t still_missing < <(missing_packages)
if [ ${#still_missing[@]} -gt 0 ]; then
    echo "install-test-deps: installed ${PACKAGES[*]} but ${still_missing[*]} is still missing" >&2
    exit 1
fi
version_of() { "$1" --version 2>&1 | head -n1 | awk '{print $3}'; }
# Debian's /usr/bin/chromium is a wrapper script that may complain on stderr first.
chromium_version() { "$CHROMIUM" --version 2>/dev/null | head -n1 | awk '{print $2}'; }
echo "install-test-deps: installed ${PACKAGES[*]} (prometheus $(version_of prometheus)," \
    "alertmanager $(version_of "$(alertmanager_binary)")," \
    "postgresql $(version_of "$(postgres_bindir)/postgres")," \
    "chromium $(chromium_version)) in $(($(date +%s) - started))s;" \
    "service starts were suppressed"
report_notes
