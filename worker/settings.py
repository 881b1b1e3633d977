"""Worker and client settings, following Temporal's own connection conventions.

Connection: ``temporalio.envconfig`` profiles (``TEMPORAL_CONFIG_FILE``, ``TEMPORAL_PROFILE``) with the
usual environment overrides (``TEMPORAL_ADDRESS``, ``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY``,
``TEMPORAL_TLS*``). With nothing configured, the default is the embedded dev server on
``localhost:7233``. changeguard's own settings use the ``CHANGEGUARD_`` prefix.

Worker Deployment Versioning (``docs/versioning.md``) is off unless ``CHANGEGUARD_DEPLOYMENT`` names
the deployment; the build id is then ``CHANGEGUARD_BUILD_ID`` or :func:`default_build_id`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from temporalio.common import WorkerDeploymentVersion
from temporalio.envconfig import ClientConfigProfile

TASK_QUEUE = "changeguard"
DEFAULT_ADDRESS = "localhost:7233"
DEFAULT_NAMESPACE = "default"
STATE_DIR = Path(".changeguard")
DEPLOYMENT = "changeguard"
"""The Worker Deployment name the docs and ``changeguard dev --versioned`` use."""


@dataclass(frozen=True)
class Settings:
    """Everything a worker or client needs; build with :meth:`from_env`.

    Attributes:
        connect: keyword arguments for ``Client.connect`` (address, namespace, TLS, API key).
        task_queue: the task queue workers poll and changes start on.
        ui_url: base URL of the Temporal Web UI, for links printed by the CLI.
        policy: the platform's policy bundle, a YAML file or a directory of them
            (``CHANGEGUARD_POLICY``); a worker refuses to start without one (fail closed).
        log_format: ``console``, ``json`` or ``auto`` (console on a terminal).
        max_concurrent_activities: worker slots for activities (``CHANGEGUARD_MAX_ACTIVITIES``).
        eager_activities: at most this many free activity slots a workflow task may reserve for
            its gate checks and compensations to start at once, without the task queue's round
            trip (``CHANGEGUARD_EAGER_ACTIVITIES``, default 50; 0: never; :mod:`worker.eager`).
        audit_url: the audit store, ``sqlite:///PATH`` or ``postgresql://...``
            (``CHANGEGUARD_AUDIT_URL``).
        directory: the operator directory, ``yaml:PATH`` or ``plugin:NAME``
            (``CHANGEGUARD_DIRECTORY``).
        metrics_bind: ``host:port`` where a worker process serves the SDK's Prometheus metrics
            (``CHANGEGUARD_METRICS_BIND``; unset: off; other commands never bind it).
        pagers: each pager's params by name, from ``CHANGEGUARD_PAGERS`` (JSON), e.g.
            ``{"webhook": {"url": "https://pager.example/hook"}}``.
        deployment: the Worker Deployment this worker belongs to (``CHANGEGUARD_DEPLOYMENT``);
            ``None`` (the default): the worker runs unversioned.
        build_id: this build's id within the deployment (``CHANGEGUARD_BUILD_ID``; default
            :func:`default_build_id`, from the package version and the workflow code).
        set_current: once the worker polls, make its version the deployment's current one
            (``CHANGEGUARD_SET_CURRENT=1``; ``changeguard worker --set-current``).
        gc_tuning: once start-up is over, freeze the start-up objects and collect garbage less
            often (:mod:`worker.gctune`); ``CHANGEGUARD_GC_TUNING=0`` leaves CPython's defaults.
        change_events_url, change_events_routing_key, change_events_source: the change-event
            sink (``CHANGEGUARD_CHANGE_EVENTS_URL``, ``…_ROUTING_KEY``, ``…_SOURCE``; no URL: no
            events; docs/change-events.md).

    Raises:
        SettingsError: a deployment name or build id the server would refuse.
    """

    connect: dict[str, Any] = field(default_factory=dict)
    task_queue: str = TASK_QUEUE
    ui_url: str = "http://localhost:8233"
    policy: Path | None = None
    log_format: str = "auto"
    max_concurrent_activities: int = 100
    eager_activities: int = 50
    audit_url: str = "sqlite:///.changeguard/audit.db"
    directory: str = "yaml:.changeguard/operators.yaml"
    pagers: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics_bind: str | None = None
    deployment: str | None = None
    build_id: str | None = None
    set_current: bool = False
    gc_tuning: bool = True
    change_events_url: str = ""
    change_events_routing_key: str = ""
    change_events_source: str = "changeguard"

    def __post_init__(self) -> None:
        _check_name("CHANGEGUARD_DEPLOYMENT", self.deployment, dots=False)
        _check_name("CHANGEGUARD_BUILD_ID", self.build_id, dots=True)
        if self.change_events_url and not self.change_events_routing_key:
            raise SettingsError(
                "CHANGEGUARD_CHANGE_EVENTS_URL is set but CHANGEGUARD_CHANGE_EVENTS_ROUTING_KEY is "
                "not: set the sink's routing key too (or unset the URL to send no change events)"
            )
        if self.set_current and self.deployment is None:
            raise SettingsError(
                "CHANGEGUARD_SET_CURRENT needs a deployment: set CHANGEGUARD_DEPLOYMENT too"
            )

    @property
    def versioned(self) -> bool:
        """The worker opts into Worker Deployment Versioning."""
        return self.deployment is not None

    def deployment_version(self) -> WorkerDeploymentVersion | None:
        """This worker's deployment version, or ``None`` when it runs unversioned."""
        if self.deployment is None:
            return None
        return WorkerDeploymentVersion(self.deployment, self.build_id or default_build_id())

    @property
    def address(self) -> str:
        """The frontend address clients dial."""
        return str(self.connect.get("target_host", DEFAULT_ADDRESS))

    @property
    def namespace(self) -> str:
        """The Temporal namespace."""
        return str(self.connect.get("namespace", DEFAULT_NAMESPACE))

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Read settings from the environment (or ``env``) and Temporal's config profile."""
        env = dict(os.environ if env is None else env)
        profile = ClientConfigProfile.load(
            profile=env.get("TEMPORAL_PROFILE"),
            config_file_strict=False,
            override_env_vars=env,
        )
        connect: dict[str, Any] = dict(profile.to_client_connect_config())
        connect.setdefault("target_host", DEFAULT_ADDRESS)
        connect.setdefault("namespace", DEFAULT_NAMESPACE)
        policy = env.get("CHANGEGUARD_POLICY", "").strip()
        values: dict[str, Any] = {
            "connect": connect,
            "task_queue": env.get("CHANGEGUARD_TASK_QUEUE", TASK_QUEUE),
            "ui_url": env.get("CHANGEGUARD_UI_URL", _ui_guess(connect["target_host"])),
            "policy": Path(policy) if policy else None,
            "log_format": env.get("CHANGEGUARD_LOG_FORMAT", "auto"),
            "max_concurrent_activities": _count(
                "CHANGEGUARD_MAX_ACTIVITIES", env.get("CHANGEGUARD_MAX_ACTIVITIES", ""), 100, 1
            ),
            "eager_activities": _count(
                "CHANGEGUARD_EAGER_ACTIVITIES", env.get("CHANGEGUARD_EAGER_ACTIVITIES", ""), 50, 0
            ),
            "audit_url": env.get("CHANGEGUARD_AUDIT_URL", cls.audit_url),
            "directory": env.get("CHANGEGUARD_DIRECTORY", cls.directory),
            "pagers": _pagers(env.get("CHANGEGUARD_PAGERS", "")),
            "metrics_bind": env.get("CHANGEGUARD_METRICS_BIND") or None,
            "deployment": env.get("CHANGEGUARD_DEPLOYMENT", "").strip() or None,
            "build_id": env.get("CHANGEGUARD_BUILD_ID", "").strip() or None,
            "set_current": _flag("CHANGEGUARD_SET_CURRENT", env.get("CHANGEGUARD_SET_CURRENT", "")),
            "gc_tuning": _flag(
                "CHANGEGUARD_GC_TUNING", env.get("CHANGEGUARD_GC_TUNING", "").strip() or "1"
            ),
            "change_events_url": env.get("CHANGEGUARD_CHANGE_EVENTS_URL", "").strip(),
            "change_events_routing_key": env.get(
                "CHANGEGUARD_CHANGE_EVENTS_ROUTING_KEY", ""
            ).strip(),
            "change_events_source": env.get("CHANGEGUARD_CHANGE_EVENTS_SOURCE", "").strip()
            or "changeguard",
        }
        values.update(overrides)
        return cls(**values)

    def workflow_url(self, workflow_id: str, run_id: str | None = None) -> str:
        """The Web UI page of a workflow."""
        from urllib.parse import quote

        url = f"{self.ui_url}/namespaces/{self.namespace}/workflows/{quote(workflow_id, safe='')}"
        return f"{url}/{run_id}" if run_id else url


class SettingsError(ValueError):
    """A setting is malformed; the message names the variable and the expected form."""


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,254}")
_RESERVED_BUILD_IDS = {"__unversioned__"}


def _check_name(variable: str, value: str | None, *, dots: bool) -> None:
    """A deployment name or build id: letters, digits, ``_+-`` (and ``.`` in a build id), ≤ 255."""
    if value is None:
        return
    if not _NAME.fullmatch(value) or (not dots and "." in value) or value in _RESERVED_BUILD_IDS:
        allowed = "letters, digits, '_', '+', '-'" + (" and '.'" if dots else " (no '.')")
        raise SettingsError(f"{variable}={value!r}: use 1-255 of {allowed}, starting alphanumeric")


def _count(variable: str, raw: str, default: int, minimum: int) -> int:
    value = raw.strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise SettingsError(f"{variable}={raw!r}: use a whole number of at least {minimum}")
    return number


def _flag(variable: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"{variable}={raw!r}: use 1/true/yes or 0/false/no")


@cache
def default_build_id() -> str:
    """``<package version>-<12 hex>``: the version and a hash of the ``workflows/`` sources.

    Only workflow code decides whether a running change replays, so two builds that differ only in
    activities, guardrails or the CLI share a build id (and their workers one deployment version),
    while any edit under ``workflows/`` makes a new one. Set ``CHANGEGUARD_BUILD_ID`` (e.g. to the
    release's git commit) to version by release instead.
    """
    return f"{_package_version()}-{workflow_code_hash()[:12]}"


def workflow_code_hash() -> str:
    """SHA-256 over every ``*.py`` file of the ``workflows`` package (relative path and bytes)."""
    spec = importlib.util.find_spec("workflows")
    if spec is None or not spec.submodule_search_locations:
        raise SettingsError("cannot find the workflows package to derive a build id")
    root = Path(next(iter(spec.submodule_search_locations)))
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def _package_version() -> str:
    try:
        return importlib.metadata.version("changeguard")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _pagers(raw: str) -> dict[str, dict[str, Any]]:
    if not raw.strip():
        return {}
    import json

    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"CHANGEGUARD_PAGERS is not JSON ({exc})") from exc
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise SettingsError(
            'CHANGEGUARD_PAGERS must map pager names to params, e.g. {"webhook": {"url": "..."}}'
        )
    return value


def _ui_guess(address: str) -> str:
    """The dev server serves its UI on the gRPC port + 1000; for other hosts set CHANGEGUARD_UI_URL."""
    host, _, port = address.rpartition(":")
    if host in ("localhost", "127.0.0.1") and port.isdigit():
        return f"http://{host}:{int(port) + 1000}"
    return "http://localhost:8233"
