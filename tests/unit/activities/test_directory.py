"""The operator directory: the YAML file, the plug-in point, and the ``load_directory`` activity."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

import guardrails.plugins
from activities.audit import (
    DEFAULT_DIRECTORY,
    DIRECTORY_GROUP,
    AuditActivities,
    DirectoryError,
    SqliteAuditStore,
    YamlDirectory,
    new_directory_registry,
    open_directory,
)
from guardrails.plugins import RegistrationError
from worker.settings import Settings
from workflows import errors
from workflows.models import Directory, LoadDirectoryInput

OPERATORS = """\
operators:
  alice: [web-team]
  bob: [sre-leads, release-managers]
"""

ACCEPTED_FORMS = (
    "use 'yaml:PATH' (e.g. 'yaml:.changeguard/operators.yaml') or 'plugin:NAME' "
    "(a plug-in registered under the entry-point group 'changeguard.directories')"
)


class StaticDirectory:
    """A directory plug-in, loaded below through a real entry point."""

    name = "static-test"

    async def load(self) -> Directory:
        return Directory(operators={"carol": ["sre-leads"]})


class NotADirectory:
    """A plug-in that breaks the contract at run time: load returns something else."""

    name = "broken-test"

    async def load(self) -> dict[str, list[str]]:
        return {"carol": ["sre-leads"]}


@pytest.fixture
def store() -> SqliteAuditStore:
    return SqliteAuditStore(":memory:")


@pytest.fixture
def advertised(monkeypatch: pytest.MonkeyPatch) -> None:
    """Advertise the test plug-ins as entry points, as an installed package would."""

    def entry_points(*, group: str) -> list[EntryPoint]:
        if group != DIRECTORY_GROUP:
            return []
        return [
            EntryPoint(name=cls.name, value=f"{__name__}:{cls.__name__}", group=group)
            for cls in (StaticDirectory, NotADirectory)
        ]

    monkeypatch.setattr(guardrails.plugins, "entry_points", entry_points)


async def test_yaml_directory_loads_operators_and_groups(tmp_path: Path) -> None:
    """The YAML file gives each operator's groups, and says where it came from."""
    path = tmp_path / "operators.yaml"
    path.write_text(OPERATORS)
    directory = await open_directory(f"yaml:{path}").load()
    assert directory == Directory(
        operators={"alice": ["web-team"], "bob": ["sre-leads", "release-managers"]},
        source=f"yaml:{path}",
    )
    assert directory.groups_of("bob") == ["sre-leads", "release-managers"]


async def test_unknown_operator_has_no_groups(tmp_path: Path) -> None:
    """An operator missing from the directory belongs to no group."""
    path = tmp_path / "operators.yaml"
    path.write_text(OPERATORS)
    directory = await YamlDirectory(path).load()
    assert directory.groups_of("mallory") == []


async def test_operator_without_groups_and_duplicate_groups(tmp_path: Path) -> None:
    """``carol:`` with nothing after it has no groups; a group listed twice counts once."""
    path = tmp_path / "operators.yaml"
    path.write_text("operators:\n  carol:\n  dave: [ops, ops, web-team]\n")
    directory = await YamlDirectory(path).load()
    assert directory.operators == {"carol": [], "dave": ["ops", "web-team"]}


async def test_malformed_file_lists_every_problem_with_its_location(tmp_path: Path) -> None:
    """Every problem is reported at once, located in the file, and the error names the file."""
    path = tmp_path / "operators.yaml"
    path.write_text(
        "operators:\n"
        "  alice: web-team\n"
        "  bob: [sre-leads, 7]\n"
        '  " ": [ops]\n'
        '  dave: [""]\n'
        "teams: {}\n"
    )
    with pytest.raises(DirectoryError) as caught:
        await YamlDirectory(path).load()
    problems = [
        "operators.alice: Input should be a valid list",
        "operators.bob[1]: Input should be a valid string",
        "operators.' ' (name): String should have at least 1 character",
        "operators.dave[0]: String should have at least 1 character",
        "teams: unknown field",
    ]
    assert caught.value.problems == problems
    assert str(caught.value) == (
        f"operator directory {path} is unusable (5 problems):\n"
        + "\n".join(f"  - {p}" for p in problems)
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "operators:\n  alice: [web-team\n",
            ":3:1: invalid YAML: did not find expected ',' or ']' (while parsing a flow sequence)",
        ),
        (
            "operators:\n  alice: [web-team]\n  alice: [sre-leads]\n",
            ":3:3: duplicate key 'alice' (first at line 2)",
        ),
        ("- alice\n", ": expected a mapping such as 'operators: {alice: [web-team]}', not a list"),
    ],
)
async def test_file_that_is_not_a_directory_is_located(
    tmp_path: Path, text: str, problem: str
) -> None:
    """Broken YAML is located by line and column; a file of another shape is named."""
    path = tmp_path / "operators.yaml"
    path.write_text(text)
    with pytest.raises(DirectoryError) as caught:
        await YamlDirectory(path).load()
    assert caught.value.problems == [f"{path}{problem}"]


async def test_missing_default_file_is_an_empty_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without .changeguard/operators.yaml the default directory is empty (nobody may approve)."""
    monkeypatch.chdir(tmp_path)
    assert await open_directory().load() == Directory(source=DEFAULT_DIRECTORY)


async def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    """A directory file named explicitly must exist."""
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(DirectoryError) as caught:
        await open_directory(f"yaml:{path}").load()
    assert caught.value.problems == [f"{path}: no such file"]


@pytest.mark.usefixtures("advertised")
async def test_plugin_spec_loads_a_registered_plugin(store: SqliteAuditStore) -> None:
    """plugin:NAME finds the plug-in through its entry point, and load_directory returns its view."""
    activities = AuditActivities(store, "plugin:static-test")
    directory = await ActivityEnvironment().run(
        activities.load_directory, LoadDirectoryInput(change_id="chg-1")
    )
    assert isinstance(activities.directory, StaticDirectory)
    assert directory == Directory(operators={"carol": ["sre-leads"]}, source="plugin:static-test")


@pytest.mark.usefixtures("advertised")
async def test_plugin_returning_something_else_breaks_the_contract(
    store: SqliteAuditStore,
) -> None:
    """A plug-in whose load returns no Directory fails the activity as a contract violation."""
    activities = AuditActivities(store, "plugin:broken-test")
    with pytest.raises(ApplicationError) as caught:
        await ActivityEnvironment().run(
            activities.load_directory, LoadDirectoryInput(change_id="chg-1")
        )
    assert (caught.value.type, caught.value.non_retryable) == (errors.CONTRACT_VIOLATION, True)


def test_unknown_plugin_is_named() -> None:
    """plugin:NAME with nothing registered under NAME lists what is registered."""
    registry = new_directory_registry()
    registry.register(StaticDirectory)
    with pytest.raises(DirectoryError) as caught:
        open_directory("plugin:ldap", registry=registry)
    assert caught.value.problems == [
        "no operator directory named 'ldap' is registered (known: static-test)"
    ]


def test_plugin_without_async_load_is_refused() -> None:
    """Registering a directory plug-in checks the contract: an async load method."""

    class SyncDirectory:
        name = "sync-test"

        def load(self) -> Directory:
            return Directory()

    with pytest.raises(RegistrationError) as caught:
        new_directory_registry().register(SyncDirectory)  # type: ignore[arg-type]
    assert str(caught.value) == (
        f"operator directory {__name__}.test_plugin_without_async_load_is_refused.<locals>."
        "SyncDirectory does not meet the contract: it must define "
        "'async def load(self) -> Directory'"
    )


@pytest.mark.parametrize("spec", ["ldap://directory", "yaml:", "plugin:", "operators.yaml"])
def test_bad_spec_names_the_accepted_forms(spec: str, store: SqliteAuditStore) -> None:
    """A spec that is neither yaml:PATH nor plugin:NAME is refused, also when the worker starts."""
    with pytest.raises(DirectoryError) as caught:
        open_directory(spec)
    assert caught.value.problems == [f"{spec!r} is not a directory spec; {ACCEPTED_FORMS}"]
    with pytest.raises(DirectoryError):
        AuditActivities(store, spec)


async def test_load_directory_rereads_the_file_on_every_call(
    tmp_path: Path, store: SqliteAuditStore
) -> None:
    """A change to the file shows in the next load_directory call, without restarting."""
    path = tmp_path / "operators.yaml"
    path.write_text(OPERATORS)
    activities = AuditActivities(store, f"yaml:{path}")
    env = ActivityEnvironment()
    inp = LoadDirectoryInput(change_id="chg-1")
    before = await env.run(activities.load_directory, inp)
    path.write_text("operators:\n  alice: [web-team, sre-leads]\n")
    after = await env.run(activities.load_directory, inp)
    assert before.groups_of("alice") == ["web-team"]
    assert after == Directory(operators={"alice": ["web-team", "sre-leads"]}, source=f"yaml:{path}")


async def test_load_directory_fails_non_retryably_on_a_broken_file(
    tmp_path: Path, store: SqliteAuditStore
) -> None:
    """A malformed directory is a non-retryable InvalidInput that carries every problem."""
    path = tmp_path / "operators.yaml"
    path.write_text("operators:\n  alice: web-team\n")
    activities = AuditActivities(store, f"yaml:{path}")
    with pytest.raises(ApplicationError) as caught:
        await ActivityEnvironment().run(
            activities.load_directory, LoadDirectoryInput(change_id="chg-1")
        )
    assert (caught.value.type, caught.value.non_retryable) == (errors.INVALID_INPUT, True)
    assert list(caught.value.details) == [["operators.alice: Input should be a valid list"]]


def test_settings_name_the_directory() -> None:
    """CHANGEGUARD_DIRECTORY picks the directory; the default is .changeguard/operators.yaml."""
    assert Settings.from_env(env={}).directory == DEFAULT_DIRECTORY
    env = {"CHANGEGUARD_DIRECTORY": "plugin:ldap"}
    assert Settings.from_env(env=env).directory == "plugin:ldap"
