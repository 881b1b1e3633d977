"""The platform's policy bundle: loaded from files, validated, hashed, held, and reloaded.

Workers read the bundle from ``CHANGEGUARD_POLICY``: one YAML file, or a directory whose ``*.yaml``
and ``*.yml`` files are merged in file-name order (``guardrails``, ``signals`` and ``responses``
concatenated; each other setting, such as ``unmatched``, ``pager`` or ``identity``, may be set by
one file, or by several only to the same value). Every problem is reported at once, located by file
and line (``platform/10-prod.yaml:7: guardrails[1].params.timezone: unknown time zone``).

A :class:`BundleHolder` keeps the bundle in force. Every gate's ``resolve_policy`` and every bake's
``resolve_rollout`` read it at that moment, so an edit reaches running changes at their next gate.
Its watcher polls the files every two seconds: an edit that validates replaces the bundle; one that
does not is refused, logged with every problem, counted, and reported in every report
(``bundle_warning``) while the last good bundle stays in force.

Loading (reading, merging, validating, locating every problem) is in
:mod:`guardrails.bundle_load`, whose names are re-exported here. Pure of Temporal; the file I/O
runs in a thread when the watcher runs in an event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from guardrails.bundle_load import (
    LIST_SECTIONS,
    Bundle,
    BundleError,
    bundle_files,
    bundle_from_mapping,
    load_bundle,
)
from guardrails.policy import GuardrailRegistry
from workflows.types import excerpt

__all__ = [
    "LIST_SECTIONS",
    "POLL_INTERVAL",
    "Bundle",
    "BundleError",
    "BundleHolder",
    "bundle_files",
    "bundle_from_mapping",
    "load_bundle",
]

log = structlog.get_logger(__name__)

POLL_INTERVAL = 2.0
"""Seconds between two looks at the bundle's files."""
WARNING_MAX = 600
# An edit is loaded once two looks SETTLE seconds apart agree (at most SETTLE_LOOKS more looks):
# a watcher that reads between an editor's truncate and write must not load half a file.
SETTLE = 0.2
SETTLE_LOOKS = 10


def _fingerprint(path: Path) -> tuple[tuple[str, str], ...]:
    """What the watcher compares: each file's name and content digest (or why it is unreadable)."""
    out = []
    try:
        files = bundle_files(path) if path.exists() else []
    except OSError as exc:
        return (("!", str(exc)),)
    for file in files:
        try:
            digest = hashlib.sha256(file.read_bytes()).hexdigest()
        except OSError as exc:
            digest = f"! {exc}"
        out.append((str(file), digest))
    return tuple(out)


class BundleHolder:
    """The bundle in force in one worker, and the watcher that reloads it.

    Args:
        bundle: the bundle to start with (validated).
        path: where it was loaded from; ``None`` for a fixed bundle (no reloading).
        registry: the guardrails reloaded bundles are checked against.
        on_refused: called once per refused edit (the worker counts it in a metric).
        interval: seconds between two looks at the files.
    """

    def __init__(
        self,
        bundle: Bundle,
        *,
        path: Path | None = None,
        registry: GuardrailRegistry | None = None,
        on_refused: Callable[[], None] | None = None,
        interval: float = POLL_INTERVAL,
    ) -> None:
        self._bundle = bundle
        self.path = path
        self.registry = registry
        self.on_refused = on_refused
        self.interval = interval
        self.warning = ""
        self.refused = 0
        self._seen = _fingerprint(path) if path is not None else ()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def load(cls, path: str | Path, *, registry: GuardrailRegistry | None = None) -> BundleHolder:
        """Load the bundle at ``path`` and hold it, ready to watch.

        Raises:
            BundleError: the bundle is invalid (a worker must not start).

        """
        root = Path(path).expanduser()
        return cls(load_bundle(root, registry=registry), path=root, registry=registry)

    @classmethod
    def fixed(cls, bundle: Bundle | dict[str, Any]) -> BundleHolder:
        """Hold a bundle that never changes (tests; a mapping is validated first)."""
        return cls(bundle if isinstance(bundle, Bundle) else bundle_from_mapping(bundle))

    def current(self) -> Bundle:
        """The bundle in force now."""
        return self._bundle

    def current_hash(self) -> str:
        """The hash of the bundle in force now (the audit records it)."""
        return self._bundle.hash

    def replace(self, bundle: Bundle) -> None:
        """Put another (validated) bundle in force."""
        self._bundle = bundle
        self.warning = ""

    def check(self) -> bool:
        """Look at the files once; reload them if they changed. Returns whether the bundle changed.

        An edit that does not validate is refused once (logged, counted, kept as :attr:`warning`)
        and the bundle in force stays; a later valid edit, or the files put back, clears it.
        """
        if self.path is None:
            return False
        seen = _fingerprint(self.path)
        if seen == self._seen:
            return False
        seen = self._settled(seen)
        self._seen = seen
        old = self._bundle
        try:
            new = load_bundle(self.path, registry=self.registry)
        except BundleError as exc:
            self.refused += 1
            at = datetime.now(UTC).isoformat(timespec="seconds")
            self.warning = excerpt(
                f"an edit of the policy bundle at {at} was refused ({len(exc.problems)} "
                f"problem(s): {'; '.join(exc.problems)}); still judging by bundle {old.hash}",
                WARNING_MAX,
            )
            log.error(
                "policy bundle edit refused; the last good bundle stays in force",
                source=str(self.path),
                bundle_hash=old.hash,
                problems=exc.problems,
            )
            if self.on_refused is not None:
                with contextlib.suppress(Exception):  # a metric must never stop the watcher
                    self.on_refused()
            return False
        self.replace(new)
        if new.hash != old.hash:
            log.info(
                "policy bundle reloaded",
                source=str(self.path),
                bundle_hash=new.hash,
                previous=old.hash,
                rules=len(new.policy.guardrails),
            )
        return new.hash != old.hash

    def _settled(self, seen: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        """Wait until two looks ``SETTLE`` seconds apart agree (an editor's write is done)."""
        for _ in range(SETTLE_LOOKS):
            time.sleep(SETTLE)
            again = _fingerprint(self.path) if self.path is not None else ()
            if again == seen:
                break
            seen = again
        return seen

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await asyncio.to_thread(self.check)
            except Exception:  # the watcher outlives any surprise; the bundle in force stays
                log.exception("policy bundle watcher failed to look at the files")

    def start(self) -> None:
        """Start watching the files from the running event loop (no-op for a fixed bundle)."""
        if self.path is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._watch(), name="policy-bundle-watcher"
            )

    async def stop(self) -> None:
        """Stop watching."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
