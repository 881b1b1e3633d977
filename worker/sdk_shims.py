"""A measured, version-pinned shim over one cost of the Temporal Python SDK (issue 15, the gate).

Before every workflow activation the SDK makes three passes over its payloads (codec references,
external storage, codec) and three more over every completion; for *each payload* each pass asks
the workflow's sandbox for the payload's serialization context, and the sandbox answers by
``exec``-ing a code string with its importer applied (``_Instance.get_serialization_context`` in
``temporalio/worker/workflow_sandbox/_runner.py``). With no payload codec and no external storage
— changeguard's converter has neither (:mod:`worker.converter`) — every one of those passes
returns the payloads unchanged: the work is pure cost. A gate of 50 checks spent a sixth of its
worker's CPU there (``py-spy``; bench/README.md, "Scale").

:func:`install` makes the two SDK functions skip those passes **only** when the data converter has
neither a codec nor external storage; with either, the SDK's own functions run, untouched. It
applies only to the SDK versions it was verified against (:data:`VERIFIED`): on another version it
changes nothing and logs why, and ``tests/unit/worker/test_sdk_shims.py`` fails until someone reads
that version's ``temporalio/bridge/worker.py`` again and adds it.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import temporalio
import temporalio.bridge.worker as bridge_worker
from temporalio.converter import DataConverter
from temporalio.converter._extstore import StorageOperationMetrics

log = structlog.get_logger(__name__)

VERIFIED = frozenset({"1.35.0"})
"""SDK versions whose ``decode_activation``/``encode_completion`` only apply the codec and the
external storage (read line by line): skipping them without either changes nothing."""

PASSES = ("decode_activation", "encode_completion")
"""The two functions of ``temporalio.bridge.worker`` the shim wraps."""

_INSTALLED = "__changeguard_identity_skip__"


def is_identity(converter: DataConverter) -> bool:
    """Whether the SDK's payload passes leave every payload as it is for ``converter``."""
    return converter.payload_codec is None and converter.external_storage is None


def _skipping(original: Callable[..., Awaitable[StorageOperationMetrics]]) -> Any:
    @functools.wraps(original)
    async def wrapper(message: Any, data_converter: DataConverter, **kwargs: Any) -> Any:
        if is_identity(data_converter):
            return StorageOperationMetrics()  # what the passes report when nothing was stored
        return await original(message, data_converter, **kwargs)

    setattr(wrapper, _INSTALLED, original)
    return wrapper


def installed() -> bool:
    """Whether :func:`install` has wrapped the SDK's passes in this process."""
    return all(hasattr(getattr(bridge_worker, name), _INSTALLED) for name in PASSES)


def install(version: str | None = None) -> bool:
    """Skip the SDK's payload passes when they cannot change a payload; idempotent.

    Args:
        version: the SDK version to check against :data:`VERIFIED` (default: the installed one).

    Returns:
        Whether the shim is in place after the call.
    """
    version = version or temporalio.__version__
    if version not in VERIFIED:
        log.warning(
            "sdk shim not applied: temporalio %s is not a version it was verified against "
            "(%s); payload passes run as the SDK ships them",
            version,
            ", ".join(sorted(VERIFIED)),
        )
        return installed()
    for name in PASSES:
        current = getattr(bridge_worker, name)
        if not hasattr(current, _INSTALLED):
            setattr(bridge_worker, name, _skipping(current))
    return True


def uninstall() -> None:
    """Put the SDK's own functions back (tests compare both)."""
    for name in PASSES:
        current = getattr(bridge_worker, name)
        original = getattr(current, _INSTALLED, None)
        if original is not None:
            setattr(bridge_worker, name, original)
