"""Worker and client settings, following Temporal's own connection conventions.

Connection: ``temporalio.envconfig`` profiles (``TEMPORAL_CONFIG_FILE``, ``TEMPORAL_PROFILE``) with the
usual environment overrides (``TEMPORAL_ADDRESS``, ``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY``,
``TEMPORAL_TLS*``). With nothing configured, the default is the embedded dev server on
``localhost:7233``. changeguard's own settings use the ``CHANGEGUARD_`` prefix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.envconfig import ClientConfigProfile

TASK_QUEUE = "changeguard"
DEFAULT_ADDRESS = "localhost:7233"
DEFAULT_NAMESPACE = "default"
STATE_DIR = Path(".changeguard")


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
        max_concurrent_activities: worker slots for activities.
        audit_url: the audit store, ``sqlite:///PATH`` or ``postgresql://...``
            (``CHANGEGUARD_AUDIT_URL``).
        directory: the operator directory, ``yaml:PATH`` or ``plugin:NAME``
            (``CHANGEGUARD_DIRECTORY``).
        metrics_bind: ``host:port`` where a worker process serves the SDK's Prometheus metrics
            (``CHANGEGUARD_METRICS_BIND``; unset: off; other commands never bind it).
        pagers: each pager's params by name, from ``CHANGEGUARD_PAGERS`` (JSON), e.g.
            ``{"webhook": {"url": "https://pager.example/hook"}}``.
    """

    connect: dict[str, Any] = field(default_factory=dict)
    task_queue: str = TASK_QUEUE
    ui_url: str = "http://localhost:8233"
    policy: Path | None = None
    log_format: str = "auto"
    max_concurrent_activities: int = 100
    audit_url: str = "sqlite:///.changeguard/audit.db"
    directory: str = "yaml:.changeguard/operators.yaml"
    pagers: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics_bind: str | None = None

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
            "max_concurrent_activities": int(env.get("CHANGEGUARD_MAX_ACTIVITIES", "100")),
            "audit_url": env.get("CHANGEGUARD_AUDIT_URL", cls.audit_url),
            "directory": env.get("CHANGEGUARD_DIRECTORY", cls.directory),
            "pagers": _pagers(env.get("CHANGEGUARD_PAGERS", "")),
            "metrics_bind": env.get("CHANGEGUARD_METRICS_BIND") or None,
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
