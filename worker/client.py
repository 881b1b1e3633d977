"""The one way changeguard connects to Temporal: pydantic data converter, tracing, our settings."""

from __future__ import annotations

from typing import Any

from temporalio.client import Client
from temporalio.service import RPCError

from worker.converter import data_converter
from worker.settings import Settings
from worker.telemetry import client_plugins, runtime


class TemporalUnreachable(Exception):
    """The Temporal frontend could not be reached (the CLI exits 4)."""


async def connect(
    settings: Settings | None = None, *, serve_metrics: bool = False, **overrides: Any
) -> Client:
    """Connect a client with the pydantic data converter and the tracing plugin.

    Only worker processes pass ``serve_metrics=True``: the SDK metrics endpoint
    (``CHANGEGUARD_METRICS_BIND``) is theirs, so CLI commands never contend for its port.

    Raises:
        TemporalUnreachable: the server did not answer; the message names the address.
    """
    settings = settings or Settings.from_env()
    options: dict[str, Any] = {**settings.connect, **overrides}
    target = options.pop("target_host")
    try:
        return await Client.connect(
            target,
            data_converter=data_converter,
            plugins=client_plugins(),
            runtime=runtime(settings.metrics_bind if serve_metrics else None),
            **options,
        )
    except (RPCError, RuntimeError, OSError) as exc:
        raise TemporalUnreachable(
            f"cannot reach Temporal at {target} (namespace {options.get('namespace')}): {exc}. "
            "Start one with 'changeguard dev', or set TEMPORAL_ADDRESS / a temporalio profile."
        ) from exc


class SearchAttributesMissing(Exception):
    """The namespace lacks changeguard's search attributes and they could not be added."""


async def ensure_search_attributes(client: Client, namespace: str, *, check: bool = True) -> None:
    """Register every search attribute changeguard upserts (idempotent).

    Without them every workflow task of ``GuardedChange`` fails and retries forever, so the worker
    checks at start-up and refuses to run rather than poll work it cannot complete.

    Args:
        client: a connected client whose namespace is to be prepared.
        namespace: the namespace to prepare.
        check: list the namespace's attributes first and add only the missing ones (the
            time-skipping test server cannot list, so its fixture passes ``False``).

    Raises:
        SearchAttributesMissing: they are missing and this client may not add them; the message
            gives the ``temporal operator search-attribute create`` command to run.
    """
    from temporalio.api.enums.v1 import IndexedValueType
    from temporalio.api.operatorservice.v1 import (
        AddSearchAttributesRequest,
        ListSearchAttributesRequest,
    )

    from workflows import search_attributes as sa

    wanted = {key.name: key.indexed_value_type for key in sa.ALL}
    if check:
        listing = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=namespace)
        )
        wanted = {n: t for n, t in wanted.items() if n not in listing.custom_attributes}
    if not wanted:
        return
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=namespace,
                search_attributes={n: IndexedValueType.ValueType(t) for n, t in wanted.items()},
            )
        )
    except RPCError as exc:
        flags = " ".join(
            f"--name {n} --type {t.name.title().replace('_', '')}" for n, t in wanted.items()
        )
        raise SearchAttributesMissing(
            f"namespace {namespace} lacks search attributes {sorted(wanted)} and adding them "
            f"failed ({exc}); ask an operator to run: temporal operator search-attribute create "
            f"--namespace {namespace} {flags}"
        ) from exc
