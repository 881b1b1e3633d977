#!/usr/bin/env bash
# Build a Python 3.11 base image from Debian's packages, for engines that cannot pull
# python:3.11-slim (no registry reachable, as on changeguard's CI machines).
#
#   infra/worker/python-base.sh [TAG]       (default changeguard/python-base:3.11-bookworm)
#
# debootstrap (installed from Debian's packages if missing) lays out a minimal Debian 12 with
# python3.11, python3-venv and ca-certificates, using the machine's own apt mirror; the tree is
# imported as a one-layer image. Needs root. Skipped if the tag exists (pass FORCE=1 to rebuild).
# Then: BASE=changeguard/python-base:3.11-bookworm infra/worker/build.sh
set -euo pipefail

export PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
tag=${1:-changeguard/python-base:3.11-bookworm}
docker=${DOCKER:-docker}
suite=bookworm

die() {
    echo "worker/python-base: $*" >&2
    exit 1
}

if [ -z "${FORCE:-}" ] && "$docker" image inspect "$tag" >/dev/null 2>&1; then
    echo "worker/python-base: $tag exists; FORCE=1 rebuilds it" >&2
    exit 0
fi
[ "$(id -u)" -eq 0 ] || die "debootstrap needs root"
if ! command -v debootstrap >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap \
        >/dev/null || die "could not install debootstrap"
fi
# The mirror apt already uses (deb822 sources first, then the one-line format).
mirror=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk 'NR == 1 {print $2}' || true)
if [ -z "$mirror" ]; then
    mirror=$(grep -h '^deb ' /etc/apt/sources.list 2>/dev/null | awk 'NR == 1 {print $2}' || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
started=$(date +%s)
debootstrap --variant=minbase --include=python3.11,python3-venv,ca-certificates \
    "$suite" "$work/rootfs" "$mirror" >"$work/log" 2>&1 || {
    tail -n 30 "$work/log" >&2
    die "debootstrap failed (log above)"
}
# What an image does not need: downloaded packages, package lists, documentation.
rm -rf "$work/rootfs"/var/cache/apt/archives/*.deb "$work/rootfs"/var/lib/apt/lists/* \
    "$work/rootfs"/usr/share/doc/* "$work/rootfs"/usr/share/man/*
tar -C "$work/rootfs" -c . | "$docker" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "debootstrap $suite minbase + python3.11 python3-venv ca-certificates" \
    - "$tag" >/dev/null
echo "worker/python-base: built $tag ($("$docker" run --rm "$tag" python3 --version)) in" \
    "$(($(date +%s) - started))s" >&2
