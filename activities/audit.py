"""The audit and directory activities: what approvals are checked against and recorded in.

Temporal history has a retention period, so every approval, refusal, operator action and the
change's story (started, gate decisions, effects, outcome) is also appended to the audit store
(invariant I6; :mod:`activities.audit_store`: append-only, idempotent, hash-chained). The operator
directory (:mod:`activities.directory`) says who is in which approver group.

The store and directory names are re-exported here, so ``from activities.audit import …`` keeps
working for every name this module has ever held.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.audit_store import (
    DEFAULT_AUDIT_URL,
    TABLE,
    AuditEntry,
    AuditRecordInvalid,
    AuditStore,
    AuditStoreError,
    AuditUrlError,
    PostgresAuditStore,
    Records,
    SqliteAuditStore,
    open_audit_store,
    postgres_schema,
)
from activities.directory import (
    DEFAULT_DIRECTORY,
    DIRECTORY_GROUP,
    DirectoryError,
    DirectorySource,
    YamlDirectory,
    default_directory_registry,
    new_directory_registry,
    open_directory,
)
from guardrails.plugins import PluginRegistry
from workflows import errors, names
from workflows.identity_models import IdentityRequirements
from workflows.models import (
    AuditRecord,
    ClaimChangeInput,
    ClaimChangeResult,
    Directory,
    LoadDirectoryInput,
)

__all__ = [
    "CLAIM_CHANGE",
    "DEFAULT_AUDIT_URL",
    "DEFAULT_DIRECTORY",
    "DIRECTORY_GROUP",
    "LOAD_DIRECTORY",
    "RECORD_AUDIT",
    "TABLE",
    "AuditActivities",
    "AuditEntry",
    "AuditRecordInvalid",
    "AuditStore",
    "AuditStoreError",
    "AuditUrlError",
    "DirectoryError",
    "DirectorySource",
    "PostgresAuditStore",
    "Records",
    "SqliteAuditStore",
    "YamlDirectory",
    "as_activity_error",
    "default_directory_registry",
    "new_directory_registry",
    "open_audit_store",
    "open_directory",
    "postgres_schema",
]

log = structlog.get_logger(__name__)

RECORD_AUDIT = names.RECORD_AUDIT
CLAIM_CHANGE = names.CLAIM_CHANGE
LOAD_DIRECTORY = names.LOAD_DIRECTORY


def _no_bundle() -> str:
    return ""


def as_activity_error(exc: AuditStoreError) -> ApplicationError:
    """A store error as an activity should raise it: non-retryable when retrying cannot help.

    ``raise as_activity_error(exc) from exc`` in any activity that appends to the store (the change
    activities' ledger writes too): a record no store can keep fails once, as ``InvalidInput``; a
    store that cannot be reached is ``AuditUnavailable``, retried with backoff. Always a new
    exception: raising ``exc`` from itself would make it its own cause, which the SDK's failure
    converter follows until ``RecursionError`` (found by the chaos campaign).
    """
    if exc.retryable:  # a lost connection, a locked file: Temporal retries with backoff
        return ApplicationError(str(exc), type=errors.AUDIT_UNAVAILABLE, non_retryable=False)
    problems = exc.problems if isinstance(exc, AuditRecordInvalid) else []
    return ApplicationError(str(exc), problems, type=errors.INVALID_INPUT, non_retryable=True)


class AuditActivities:
    """Audit and directory activities, bound to a store and a directory.

    Args:
        store: where audit records are appended (the worker closes it when it stops).
        directory_spec: ``yaml:PATH`` or ``plugin:NAME``; checked now, so a bad one stops the worker.
        directories: where ``plugin:NAME`` is looked up (default: the entry points).
        bundle_hash: the hash of the platform policy bundle the worker holds now (recorded on a
            change's ``started`` record); default: no bundle (``""``).
        identity: where the bundle the worker holds now requires signatures (returned by
            ``claim_change``); default: the worker's bundle (:func:`worker.registry.activities`).

    Raises:
        DirectoryError: the spec is malformed or names an unknown plug-in.
    """

    def __init__(
        self,
        store: AuditStore,
        directory_spec: str = DEFAULT_DIRECTORY,
        *,
        directories: PluginRegistry[DirectorySource] | None = None,
        bundle_hash: Callable[[], str] | None = None,
        identity: Callable[[], IdentityRequirements] | None = None,
    ) -> None:
        self.store = store
        self.directory_spec = directory_spec
        self.directory = open_directory(directory_spec, registry=directories)
        self.bundle_hash = bundle_hash or _no_bundle
        self.identity = identity

    @activity.defn(name=RECORD_AUDIT)
    async def record_audit(self, record: AuditRecord) -> bool:
        """Append an audit record; idempotent: False when this ``record_id`` was written before.

        Raises:
            ApplicationError: ``InvalidInput``, non-retryable, for a record no store can keep (NUL
                characters, over-long fields) or one the database refuses as such.
            AuditStoreError: the store is unreachable or busy (retryable).
        """
        try:
            inserted = await asyncio.to_thread(self.store.append, record)
        except AuditStoreError as exc:
            log.warning(
                "audit record not written",
                record_id=record.record_id[:200],
                change_id=record.change_id[:200],
                error=str(exc)[:500],
                retryable=exc.retryable,
            )
            raise as_activity_error(exc) from exc
        log.info(
            "audit record written" if inserted else "audit record already present",
            record_id=record.record_id,
            action=record.action.value,
            change_id=record.change_id,
        )
        return inserted

    @activity.defn(name=CLAIM_CHANGE)
    async def claim_change(self, inp: ClaimChangeInput) -> ClaimChangeResult:
        """Claim a change id for one run chain, once and for all, writing its ``started`` record.

        The same ``run_id`` again (an activity retry, a Temporal reset, which keeps the chain's
        first run id) is ``claimed=True`` and writes nothing; another run id is ``claimed=False``
        with the run and time that hold the id.

        Raises:
            ApplicationError: ``InvalidInput``, non-retryable, for values no store can keep.
            AuditStoreError: the store is unreachable or busy (retryable).
        """
        bundle = self.bundle_hash()
        try:
            result = await asyncio.to_thread(self.store.claim, inp, bundle_hash=bundle)
        except AuditStoreError as exc:
            raise as_activity_error(exc) from exc
        if self.identity is not None:
            result = result.model_copy(update={"identity": self.identity()})
        log.info(
            "change id claimed" if result.claimed else "change id already used",
            change_id=inp.change_id,
            run_id=inp.run_id,
            held_by=result.run_id,
        )
        return result

    @activity.defn(name=LOAD_DIRECTORY)
    async def load_directory(self, inp: LoadDirectoryInput) -> Directory:
        """Read the operator directory as it is now (an invalid one is a non-retryable error)."""
        try:
            directory = await self.directory.load()
        except DirectoryError as exc:
            raise ApplicationError(
                str(exc), exc.problems, type=errors.INVALID_INPUT, non_retryable=True
            ) from exc
        if not isinstance(directory, Directory):
            raise ApplicationError(
                f"operator directory {self.directory_spec} returned "
                f"{type(directory).__name__}, not Directory",
                type=errors.CONTRACT_VIOLATION,
                non_retryable=True,
            )
        if not directory.source:
            directory.source = self.directory_spec
        return directory
