#!/usr/bin/env bash
# Build a PostgreSQL image FROM scratch, from this machine's own Debian postgresql install: the
# server's binaries (postgres, initdb, pg_ctl, psql), its loadable modules (without the JIT, whose
# LLVM is larger than everything else together), its share files, the time-zone database, every
# shared library `ldd` names for them, and /bin/sh (dash) for the entry point. Nothing is pulled or
# downloaded (no registry is reachable here, and no Debian base can be bootstrapped): the chaos
# campaign (tests/chaos) runs the audit store in it, so that a crash is `docker kill` + `docker
# start` on the same volume, and a partition `docker pause`.
#
#   infra/postgres/build.sh [TAG]           (default changeguard/postgres:dev)
#
# The container runs as uid 10001. On an empty /data it runs `initdb` (superuser `postgres`, trust
# authentication from anywhere: for tests only) into /data/pgdata, then PostgreSQL on port 5432;
# on a /data that already holds a cluster it starts that one (crash recovery after a kill).
# Extra arguments are passed to `postgres` (e.g. `-c fsync=off`).
#
# Environment: PG_BINDIR (default: Debian's newest /usr/lib/postgresql/*/bin), DOCKER (default
# docker). Prints the tag on its last line. For tests only: the image holds copies of the build
# machine's binaries and runs only on a machine like it.
set -euo pipefail

tag=${1:-changeguard/postgres:dev}
docker=${DOCKER:-docker}
uid=10001

die() {
    echo "postgres/build: $*" >&2
    exit 1
}

if [ -n "${PG_BINDIR:-}" ]; then
    bindir=$PG_BINDIR
else
    bindir=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null |
        sort -V | tail -n1)
fi
[ -n "$bindir" ] && [ -x "$bindir/postgres" ] && [ -x "$bindir/initdb" ] ||
    die "no PostgreSQL server in ${bindir:-/usr/lib/postgresql/*/bin}; run infra/install-test-deps.sh as root"
libdir=$("$bindir/pg_config" --pkglibdir)
sharedir=$("$bindir/pg_config" --sharedir)
version=$("$bindir/postgres" --version)
[ -d "$sharedir" ] || die "no share directory at $sharedir"

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
rootfs=$context/rootfs
mkdir -p "$rootfs/etc" "$rootfs/data" "$rootfs/tmp" "$rootfs/bin" \
    "$rootfs$bindir" "$rootfs$libdir" "$rootfs$(dirname "$sharedir")" "$rootfs/usr/share"
chmod 1777 "$rootfs/tmp"
printf 'root:x:0:0:root:/:/sbin/nologin\npostgres:x:%s:%s:postgres:/data:/sbin/nologin\n' \
    "$uid" "$uid" >"$rootfs/etc/passwd"
printf 'root:x:0:\npostgres:x:%s:\n' "$uid" >"$rootfs/etc/group"

for tool in postgres initdb pg_ctl psql pg_isready; do
    cp "$bindir/$tool" "$rootfs$bindir/"
done
# Modules the server may load (plpgsql, the dictionaries initdb loads, encodings …), not the JIT.
find "$libdir" -maxdepth 1 -name '*.so' ! -name 'llvmjit*' -exec cp {} "$rootfs$libdir/" \;
cp -a "$sharedir" "$rootfs$(dirname "$sharedir")/"
rm -rf "$rootfs$sharedir/man" "$rootfs$sharedir/extension" # manuals; extensions beyond the core
mkdir -p "$rootfs$sharedir/extension"
cp "$sharedir"/extension/plpgsql* "$rootfs$sharedir/extension/"
# Debian builds with --with-system-tzdata.
[ -d /usr/share/zoneinfo ] && cp -a /usr/share/zoneinfo "$rootfs/usr/share/"
cp -L /bin/sh "$rootfs/bin/sh"

# Every shared library the binaries and modules load, at the path ldd resolves.
find "$rootfs" -type f \( -name '*.so' -o -perm -u+x \) -print0 | xargs -0 -r ldd 2>/dev/null |
    awk '/=> \// {print $3} /^\t\/lib/ {print $1}' | sort -u >"$context/libs"
while read -r so; do
    [ -e "$so" ] || continue
    mkdir -p "$rootfs$(dirname "$so")"
    cp -L "$so" "$rootfs$so"
done <"$context/libs"
[ -e "$rootfs/lib64/ld-linux-x86-64.so.2" ] || {
    mkdir -p "$rootfs/lib64"
    cp -L /lib64/ld-linux-x86-64.so.2 "$rootfs/lib64/"
}

cat >"$rootfs/entrypoint.sh" <<EOF
#!/bin/sh
# initdb on an empty volume, then PostgreSQL in the foreground (PID 1: docker kill is a crash).
set -eu
export PGDATA=/data/pgdata
if [ ! -e "\$PGDATA" ]; then
    $bindir/initdb --pgdata="\$PGDATA" --username=postgres --auth=trust --encoding=UTF8 \\
        --no-locale --no-sync >/data/initdb.log 2>&1 || { cat /data/initdb.log >&2; exit 1; }
    echo "host all all 0.0.0.0/0 trust" >>"\$PGDATA/pg_hba.conf"
    echo "host all all ::/0 trust" >>"\$PGDATA/pg_hba.conf"
fi
exec $bindir/postgres -D "\$PGDATA" -c listen_addresses='*' -c port=5432 \\
    -c unix_socket_directories=/tmp -c jit=off -c logging_collector=off "\$@"
EOF
chmod 755 "$rootfs/entrypoint.sh"
chown -R "$uid:$uid" "$rootfs/data"

cat >"$context/Dockerfile" <<EOF
FROM scratch
LABEL org.opencontainers.image.title="changeguard test PostgreSQL" \\
      org.opencontainers.image.description="$version, FROM scratch around the build machine's Debian install" \\
      org.opencontainers.image.version="$version"
COPY rootfs/ /
USER $uid:$uid
ENV HOME=/data TMPDIR=/tmp TZ=UTC LANG=C PATH=$bindir:/bin
WORKDIR /data
VOLUME ["/data"]
EXPOSE 5432
ENTRYPOINT ["/entrypoint.sh"]
EOF

started=$(date +%s)
"$docker" build --quiet --tag "$tag" "$context" >"$context/id" 2>"$context/err" || {
    cat "$context/err" >&2
    die "docker build failed"
}
"$docker" run --rm --entrypoint "$bindir/postgres" "$tag" --version >/dev/null ||
    die "the image cannot run postgres (a library missing?)"
echo "postgres/build: built $tag ($version, $(du -sh "$rootfs" | cut -f1)) in $(($(date +%s) - started))s" >&2
echo "$tag"
