#!/usr/bin/env bash
# Build the worker image (infra/worker/Dockerfile) from this checkout.
#
#   infra/worker/build.sh [TAG]             (default changeguard/worker:dev)
#
# Environment: BASE, the Python 3.11 base image (default python:3.11-slim, which must be in the
# engine already or pullable from your registry; here, where no registry is reachable, build one
# with infra/worker/python-base.sh and pass BASE=changeguard/python-base:3.11-bookworm);
# PYTHON (default .venv/bin/python, else python3; must be CPython 3.11, like the base, so that
# the wheels it collects fit); DOCKER (default docker).
#
# It builds the changeguard wheel and collects every dependency's wheel (from pip's cache or PyPI)
# into a build context of its own, so `docker build` installs offline. Prints the image id last.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
tag=${1:-changeguard/worker:dev}
base=${BASE:-python:3.11-slim}
docker=${DOCKER:-docker}
if [ -n "${PYTHON:-}" ]; then
    python=$PYTHON
elif [ -x "$root/.venv/bin/python" ]; then
    python=$root/.venv/bin/python
else
    python=python3
fi

die() {
    echo "worker/build: $*" >&2
    exit 1
}

"$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
    die "$python is not Python 3.11; the wheels must match the base image's Python 3.11"
"$docker" image inspect "$base" >/dev/null 2>&1 ||
    echo "worker/build: base $base is not in the engine; docker build will try to pull it" >&2

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
started=$(date +%s)

# The source as it is in the work tree (tracked and new files, nothing ignored), so the wheel is
# built outside the checkout and leaves no build/ or *.egg-info behind.
mkdir -p "$context/src" "$context/wheels"
(cd "$root" && git ls-files -z --cached --others --exclude-standard) |
    (cd "$root" && xargs -0 cp --parents --target-directory="$context/src" 2>/dev/null) ||
    die "could not copy the source (is $root a git checkout?)"
"$python" -m pip wheel --quiet --wheel-dir "$context/wheels" "$context/src" >"$context/pip.log" 2>&1 || {
    tail -n 30 "$context/pip.log" >&2
    die "pip wheel failed (log above)"
}
rm -rf "$context/src"
cp "$here/Dockerfile" "$context/Dockerfile"

"$docker" build --quiet --build-arg "BASE=$base" --tag "$tag" "$context" >"$context/id" 2>"$context/err" || {
    cat "$context/err" >&2
    die "docker build failed"
}
wheels=$(find "$context/wheels" -name '*.whl' | wc -l)
echo "worker/build: built $tag on $base ($wheels wheels) in" \
    "$(($(date +%s) - started))s" >&2
tail -n1 "$context/id"
