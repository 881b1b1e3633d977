"""Worker settings: versioning, activity slots and eager dispatch.

Versioning is off by default, a deployment turns it on, and the build id follows the code.
"""

from __future__ import annotations

import argparse

import pytest
import yaml
from temporalio.common import Priority, VersioningBehavior, WorkerDeploymentVersion

from cli.main import parser, with_versioning
from tests.helpers import REPO_ROOT
from worker.devserver import DEV_DYNAMIC_CONFIG, DevServer
from worker.eager import may_run_eagerly
from worker.main import deployment_config, eager_options
from worker.settings import Settings, SettingsError, default_build_id, workflow_code_hash
from workflows.priorities import COMPENSATION, GATE, MUTATION


def test_unversioned_by_default() -> None:
    """Without CHANGEGUARD_DEPLOYMENT a worker runs unversioned (no deployment config)."""
    settings = Settings.from_env(env={})
    assert (settings.versioned, settings.deployment_version(), deployment_config(settings)) == (
        False,
        None,
        None,
    )


def test_deployment_from_the_environment() -> None:
    """CHANGEGUARD_DEPLOYMENT and CHANGEGUARD_BUILD_ID name the version; the default is Pinned."""
    settings = Settings.from_env(
        env={
            "CHANGEGUARD_DEPLOYMENT": "changeguard",
            "CHANGEGUARD_BUILD_ID": "0.2.0+abc",
            "CHANGEGUARD_SET_CURRENT": "yes",
        }
    )
    version = WorkerDeploymentVersion("changeguard", "0.2.0+abc")
    config = deployment_config(settings)
    assert config is not None
    assert (settings.set_current, config.version, config.use_worker_versioning) == (
        True,
        version,
        True,
    )
    assert config.default_versioning_behavior is VersioningBehavior.PINNED


def test_default_build_id_is_version_and_workflow_hash() -> None:
    """The default build id is the package version and the first 12 hex of the workflows/ hash."""
    version = Settings.from_env(env={"CHANGEGUARD_DEPLOYMENT": "changeguard"}).deployment_version()
    assert version is not None
    assert version.build_id == default_build_id()
    assert version.build_id.endswith(f"-{workflow_code_hash()[:12]}")


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"CHANGEGUARD_DEPLOYMENT": "change.guard"}, "CHANGEGUARD_DEPLOYMENT"),
        ({"CHANGEGUARD_DEPLOYMENT": "cg", "CHANGEGUARD_BUILD_ID": "a b"}, "CHANGEGUARD_BUILD_ID"),
        ({"CHANGEGUARD_DEPLOYMENT": "cg", "CHANGEGUARD_BUILD_ID": "__unversioned__"}, "BUILD_ID"),
        ({"CHANGEGUARD_SET_CURRENT": "1"}, "needs a deployment"),
        ({"CHANGEGUARD_DEPLOYMENT": "cg", "CHANGEGUARD_SET_CURRENT": "maybe"}, "SET_CURRENT"),
    ],
)
def test_bad_versioning_settings_are_refused(env: dict[str, str], problem: str) -> None:
    """A name the server would refuse, or set-current without a deployment, is a SettingsError."""
    with pytest.raises(SettingsError, match=problem):
        Settings.from_env(env=env)


def _args(*argv: str) -> argparse.Namespace:
    return parser().parse_args(list(argv))


def test_worker_and_dev_flags() -> None:
    """'worker' sets current only when asked; 'dev' does by default once versioned."""
    base = Settings.from_env(env={})
    worker = with_versioning(
        _args("worker", "--versioned", "--build-id", "b1"), base, set_current=False
    )
    assert (worker.deployment, worker.build_id, worker.set_current) == ("changeguard", "b1", False)
    worker = with_versioning(
        _args("worker", "--deployment", "cg", "--set-current"), base, set_current=False
    )
    assert (worker.deployment, worker.set_current) == ("cg", True)
    dev = with_versioning(_args("dev", "--versioned"), base, set_current=True)
    assert (dev.deployment, dev.set_current) == ("changeguard", True)
    dev = with_versioning(_args("dev", "--versioned", "--no-set-current"), base, set_current=True)
    assert dev.set_current is False
    assert with_versioning(_args("dev"), base, set_current=True).deployment is None
    with pytest.raises(SettingsError):
        with_versioning(_args("worker", "--set-current"), base, set_current=False)


def test_dev_server_gets_the_versioning_dynamic_config() -> None:
    """'changeguard dev' starts the server with versioning on and fast drainage status."""
    command = " ".join(DevServer().command())
    assert "--dynamic-config-value system.enableDeploymentVersions=true" in command
    assert "matching.wv.VersionDrainageStatusRefreshInterval" in command


def test_change_event_sink_settings() -> None:
    """The sink comes from the environment; a URL without a routing key names both variables."""
    settings = Settings.from_env(
        env={
            "CHANGEGUARD_CHANGE_EVENTS_URL": " http://events.test/v2/change/enqueue ",
            "CHANGEGUARD_CHANGE_EVENTS_ROUTING_KEY": "key",
        }
    )
    assert (
        settings.change_events_url,
        settings.change_events_routing_key,
        settings.change_events_source,
    ) == ("http://events.test/v2/change/enqueue", "key", "changeguard")
    assert Settings.from_env(env={}).change_events_url == ""
    with pytest.raises(SettingsError, match="CHANGEGUARD_CHANGE_EVENTS_ROUTING_KEY is not"):
        Settings.from_env(env={"CHANGEGUARD_CHANGE_EVENTS_URL": "http://events.test/"})


def test_activity_slot_settings() -> None:
    """Slots and eager reservations come from the environment; eager 0 turns eager dispatch off."""
    settings = Settings.from_env(
        env={"CHANGEGUARD_MAX_ACTIVITIES": "40", "CHANGEGUARD_EAGER_ACTIVITIES": "8"}
    )
    assert (settings.max_concurrent_activities, settings.eager_activities) == (40, 8)
    assert eager_options(settings) == {"max_eager_activity_reservations_per_workflow_task": 8}
    defaults = Settings.from_env(env={})
    assert (defaults.max_concurrent_activities, defaults.eager_activities) == (100, 50)
    off = Settings.from_env(env={"CHANGEGUARD_EAGER_ACTIVITIES": "0"})
    assert eager_options(off) == {"disable_eager_activity_execution": True}


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CHANGEGUARD_MAX_ACTIVITIES", "0"),
        ("CHANGEGUARD_MAX_ACTIVITIES", "lots"),
        ("CHANGEGUARD_EAGER_ACTIVITIES", "-1"),
        ("CHANGEGUARD_EAGER_ACTIVITIES", "2.5"),
    ],
)
def test_bad_slot_settings_name_the_variable(variable: str, value: str) -> None:
    """A count that is not a whole number, or below its minimum, names the variable and the fix."""
    with pytest.raises(SettingsError, match=f"{variable}=.*whole number of at least"):
        Settings.from_env(env={variable: value})


def test_dev_server_allows_eager_activities() -> None:
    """'changeguard dev' (and the tests' and benches' servers) let gate checks run eagerly."""
    command = " ".join(DevServer().command())
    assert "--dynamic-config-value system.enableActivityEagerExecution=true" in command


def test_compose_server_allows_eager_activities_as_the_dev_server_does() -> None:
    """infra/compose.yaml's Temporal server gets the eager-dispatch setting `changeguard dev` uses."""
    config = yaml.safe_load((REPO_ROOT / "infra" / "temporal" / "dynamicconfig.yaml").read_text())
    key = "system.enableActivityEagerExecution"
    assert DEV_DYNAMIC_CONFIG[key] == "true"
    assert config[key] == [{"value": True, "constraints": {}}]


@pytest.mark.parametrize(
    ("priority", "eager"),
    [
        (COMPENSATION, True),
        (GATE, True),
        (MUTATION, False),
        (Priority(), False),
        (Priority(fairness_key="payments"), False),
    ],
)
def test_only_urgent_activities_may_run_eagerly(priority: Priority, eager: bool) -> None:
    """Compensations and gate work may skip the queue; mutations and unprioritised work never."""
    assert may_run_eagerly(priority) is eager
