#!/bin/sh
# Create the namespace if missing, then register changeguard's search attributes on it.
# Runs in temporalio/admin-tools (the `temporal` CLI) once the server answers; infra/compose.yaml.
#
# CHANGEGUARD_SEARCH_ATTRIBUTES lists NAME=TYPE pairs, the same ones
# workflows/search_attributes.cli_flags() gives the dev server (a test compares the two).
# Idempotent: only the attributes the namespace lacks are created. `changeguard worker` checks
# the same at start-up and adds what is missing when its credentials may; this job is for
# deployments where workers may not.
set -eu

address=${TEMPORAL_ADDRESS:-temporal:7233}
namespace=${TEMPORAL_NAMESPACE:-default}
retention=${NAMESPACE_RETENTION:-7d}
: "${CHANGEGUARD_SEARCH_ATTRIBUTES:?NAME=TYPE pairs to register}"

tries=0
until temporal operator cluster health --address "$address" >/dev/null 2>&1; do
    tries=$((tries + 1))
    [ "$tries" -lt 60 ] || { echo "register: $address not healthy after 120s" >&2; exit 1; }
    sleep 2
done

if ! temporal operator namespace describe --address "$address" -n "$namespace" >/dev/null 2>&1; then
    temporal operator namespace create --address "$address" -n "$namespace" --retention "$retention"
    echo "register: created namespace $namespace (retention $retention)"
fi

existing=$(temporal operator search-attribute list --address "$address" -n "$namespace")
args=""
for pair in $CHANGEGUARD_SEARCH_ATTRIBUTES; do
    name=${pair%%=*}
    kind=${pair#*=}
    if printf '%s\n' "$existing" | awk '{print $1}' | grep -qx "$name"; then
        echo "register: $name exists"
    else
        args="$args --name $name --type $kind"
    fi
done
if [ -n "$args" ]; then
    # shellcheck disable=SC2086 # the pairs are identifiers: word splitting is intended
    temporal operator search-attribute create --address "$address" -n "$namespace" $args
    echo "register: created$args"
fi
