#!/usr/bin/env bash
# Build the demo fleet's image (python -m demo.fleet) FROM scratch, from this machine's own files:
# the Python interpreter the venv runs on, the shared libraries it and its extension modules load
# (as ldd names them), the standard library without its tests, the few packages demo/fleet.py
# imports, and demo/fleet.py itself. Nothing is pulled or downloaded (no registry is reachable
# here, and no Debian base can be bootstrapped): the chaos campaign (tests/chaos) runs the fleet
# in it, so that a crash is `docker kill`, a partition `docker pause`.
#
#   infra/fleet/build.sh [TAG]              (default changeguard/fleet:dev)
#
# Environment: PYTHON (default .venv/bin/python), DOCKER (default docker). Prints the tag on its
# last line. For tests only: the image holds a copy of the build machine's interpreter.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
tag=${1:-changeguard/fleet:dev}
python=${PYTHON:-$root/.venv/bin/python}
docker=${DOCKER:-docker}
uid=10001

die() {
    echo "fleet/build: $*" >&2
    exit 1
}

[ -x "$python" ] || die "no Python at $python"
# Where things are: the real interpreter behind the venv, its stdlib, the venv's site-packages.
mapfile -t where < <("$python" -c '
import os, sys, sysconfig
print(os.path.realpath(sys.executable))
print(sysconfig.get_paths()["stdlib"])
print(sysconfig.get_paths()["platstdlib"] + "/lib-dynload")
print(sysconfig.get_paths()["purelib"])
print(sys.base_prefix)
print(f"python{sys.version_info[0]}.{sys.version_info[1]}")
')
exe=${where[0]} stdlib=${where[1]} dynload=${where[2]} site=${where[3]} prefix=${where[4]} pyname=${where[5]}

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
rootfs=$context/rootfs
lib=$rootfs$prefix/lib/$pyname
mkdir -p "$rootfs/etc" "$rootfs/data" "$rootfs/tmp" "$rootfs$prefix/bin" "$lib/site-packages" "$rootfs/app"
chmod 1777 "$rootfs/tmp"
printf 'root:x:0:0:root:/:/sbin/nologin\nfleet:x:%s:%s:fleet:/data:/sbin/nologin\n' "$uid" "$uid" >"$rootfs/etc/passwd"
printf 'root:x:0:\nfleet:x:%s:\n' "$uid" >"$rootfs/etc/group"
cp "$exe" "$rootfs$prefix/bin/python3"

# The standard library, without what a server never imports.
tar -C "$stdlib" --exclude=./test --exclude=./idlelib --exclude=./tkinter --exclude=./turtledemo \
    --exclude=./ensurepip --exclude=./lib2to3 --exclude=./site-packages --exclude='*/tests' \
    --exclude=./config-* -c . | tar -C "$lib" -x
[ -d "$lib/lib-dynload" ] || { mkdir -p "$lib/lib-dynload" && cp -a "$dynload/." "$lib/lib-dynload/"; }

# demo/fleet.py's imports and theirs (the venv's copies).
packages="starlette uvicorn pydantic pydantic_core httpx httpcore anyio sniffio h11 idna certifi
click typing_extensions annotated_types typing_inspection"
for name in $packages; do
    found=""
    for entry in "$site/$name" "$site/$name.py"; do
        if [ -e "$entry" ]; then
            cp -a "$entry" "$lib/site-packages/"
            found=1
        fi
    done
    [ -n "$found" ] || echo "fleet/build: note: $name is not in $site (not needed by this version?)" >&2
done
mkdir -p "$rootfs/app/demo"
cp "$root/demo/fleet.py" "$rootfs/app/demo/fleet.py"
: >"$rootfs/app/demo/__init__.py"  # only the fleet, not the rest of demo/

# Every shared library the interpreter and any extension module loads, at the path ldd resolves.
find "$rootfs" -name '*.so*' -type f -print0 | xargs -0 -r ldd 2>/dev/null |
    awk '/=> \// {print $3} /^\t\/lib/ {print $1}' | sort -u >"$context/libs"
ldd "$exe" | awk '/=> \// {print $3} /^\t\// {print $1}' >>"$context/libs"
sort -u "$context/libs" | while read -r so; do
    [ -e "$so" ] || continue
    mkdir -p "$rootfs$(dirname "$so")"
    cp -L "$so" "$rootfs$so"
done

cat >"$context/Dockerfile" <<EOF
FROM scratch
LABEL org.opencontainers.image.title="changeguard demo fleet" \\
      org.opencontainers.image.description="python -m demo.fleet, FROM scratch around the build machine's Python"
COPY rootfs/ /
USER $uid:$uid
ENV HOME=/data TMPDIR=/tmp PYTHONPATH=/app PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 LANG=C.UTF-8
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8800
ENTRYPOINT ["$prefix/bin/python3", "-c", "import sys, uvicorn; from pathlib import Path; from demo.fleet import create_app; uvicorn.run(create_app(Path('/data/fleet.db'), hosts=int(sys.argv[1])), host='0.0.0.0', port=8800, log_level='warning')"]
CMD ["6"]
EOF
chown -R "$uid:$uid" "$rootfs/data"

started=$(date +%s)
"$docker" build --quiet --tag "$tag" "$context" >"$context/id" 2>"$context/err" || {
    cat "$context/err" >&2
    die "docker build failed"
}
"$docker" run --rm --entrypoint "$prefix/bin/python3" "$tag" -c 'import demo.fleet, sqlite3, ssl' ||
    die "the image cannot import demo.fleet (a library missing?)"
echo "fleet/build: built $tag ($(du -sh "$rootfs" | cut -f1)) in $(($(date +%s) - started))s" >&2
echo "$tag"
