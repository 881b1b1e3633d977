"""The one plug-in base, the worker's plug-ins loaded once, and the typed services."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

import guardrails.plugins
from activities.audit import AuditActivities, SqliteAuditStore, open_audit_store
from activities.directory import DIRECTORIES
from activities.kinds import handoff
from activities.kinds.base import CHANGE_KINDS, ChangeKind
from activities.pagers import PAGERS, Pager
from guardrails.base import GUARDRAILS, Guardrail, Services
from guardrails.bundle import BundleHolder
from guardrails.plugins import EmptyParams, Plugin, RegistrationError
from tests import fakes
from tests.helpers import OPEN_BUNDLE
from worker import registry
from worker.callbacks import PORT_ENV
from worker.main import build_worker, load_holder, run_worker
from worker.settings import Settings
from workflows.models import ApplyResult, Target, TargetState

GROUPS = {k.group for k in (GUARDRAILS, CHANGE_KINDS, PAGERS, DIRECTORIES)}


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[str]:
    """How often each entry-point group is read (every registry loads through this one call)."""
    counts: collections.Counter[str] = collections.Counter()
    real = guardrails.plugins.entry_points

    def counting(*, group: str) -> Any:
        counts[group] += 1
        return real(group=group)

    monkeypatch.setattr(guardrails.plugins, "entry_points", counting)
    return counts


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    (tmp_path / "operators.yaml").write_text("operators: {}\n")
    return Settings.from_env(
        env={},
        task_queue=f"plugins-{tmp_path.name}",
        audit_url=f"sqlite:///{tmp_path / 'audit.db'}",
        directory=f"yaml:{tmp_path / 'operators.yaml'}",
    )


async def test_the_worker_path_reads_each_entry_point_group_once(
    env: WorkflowEnvironment,
    settings: Settings,
    loads: collections.Counter[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What ``changeguard worker`` runs (bundle, worker, activities, hand-off callbacks): 1 each."""
    monkeypatch.setenv(handoff.SECRET_ENV, "s" * 32)  # the callback endpoint is served too
    monkeypatch.setenv(PORT_ENV, "0")
    monkeypatch.setattr(handoff, "_config", None)  # restored afterwards: the endpoint goes away
    plugins = registry.Plugins.load()  # as worker.main.serve does
    holder = load_holder(settings, plugins.guardrails)
    stop = asyncio.Event()
    stop.set()  # start, serve, then shut down at once
    await run_worker(env.client, settings, stop, bundle=holder, plugins=plugins)
    assert set(loads) == GROUPS
    assert all(n == 1 for n in loads.values()), loads


def _bound(fns: list[Callable[..., Any]], name: str) -> Any:
    return next(fn.__self__ for fn in fns if fn.__name__ == name)  # type: ignore[attr-defined]


async def test_a_worker_built_without_plugins_loads_each_group_once_and_shares_them(
    env: WorkflowEnvironment, settings: Settings, loads: collections.Counter[str]
) -> None:
    """``build_worker`` alone loads every group once; the activities all hold those registries."""
    worker = build_worker(env.client, settings, bundle=OPEN_BUNDLE)
    assert set(loads) == GROUPS and all(n == 1 for n in loads.values()), loads
    plugins = worker.plugins
    audit = AuditActivities(open_audit_store(settings.audit_url), settings.directory)
    fns = registry.activities(plugins=plugins, bundle=worker.bundle, audit=audit)
    assert all(n == 1 for n in loads.values()), loads  # handing them out reads nothing
    checks = _bound(fns, "run_check")
    assert checks.guardrails is plugins.guardrails
    assert checks.services.change_kinds is plugins.kinds
    assert _bound(fns, "apply_change").kinds is plugins.kinds
    assert _bound(fns, "page").registry is plugins.pagers
    assert not any(fn.__name__ == "release_target_locks" for fn in fns)  # no client: no locks


def test_registries_given_replace_those_of_the_bundle(loads: collections.Counter[str]) -> None:
    """Tests pass fakes: only the groups not given are read, and ``plugins_of`` swaps parts."""
    plugins = registry.Plugins.load(guardrails=fakes.guardrails(), kinds=fakes.kinds())
    assert set(loads) == {PAGERS.group, DIRECTORIES.group}
    kinds = fakes.kinds(many=True)
    swapped = registry.plugins_of(plugins, kinds=kinds)
    assert (swapped.kinds, swapped.guardrails, swapped.pagers) == (
        kinds,
        plugins.guardrails,
        plugins.pagers,
    )
    assert registry.plugins_of(plugins) is plugins


def test_services_given_keep_their_fields_and_always_carry_the_kinds() -> None:
    """``activities(services=...)``: the client turns the lock activities on; kinds are added."""
    kinds = fakes.kinds()
    client: Any = object()
    fns = registry.activities(
        plugins=registry.Plugins.load(guardrails=fakes.guardrails(), kinds=kinds),
        services=Services(temporal_client=client, task_queue="q", extra={"mine": 1}),
        bundle=BundleHolder.fixed(OPEN_BUNDLE),
        audit=AuditActivities(SqliteAuditStore(":memory:")),
    )
    services = _bound(fns, "run_check").services
    assert services == Services(
        temporal_client=client, task_queue="q", change_kinds=kinds, extra={"mine": 1}
    )
    assert any(fn.__name__ == "release_target_locks" for fn in fns)


class _Params(EmptyParams):
    pass


class BadKind(ChangeKind[_Params]):
    """Implements every method but breaks three attribute rules."""

    name = "bad-kind"
    params_model = dict  # type: ignore[assignment]
    reversible = "yes"  # type: ignore[assignment]
    apply_many_size = -1

    async def apply(self, params: _Params, target: Target, *, idempotency_key: str) -> ApplyResult:
        raise NotImplementedError

    async def revert_if_applied(
        self, params: _Params, target: Target, *, applied_key: str, idempotency_key: str
    ) -> ApplyResult:
        raise NotImplementedError

    async def describe(self, params: _Params, target: Target) -> TargetState:
        raise NotImplementedError


def test_the_shared_contract_check_keeps_each_kinds_messages() -> None:
    """Every problem, in the order and words each kind used before the base was shared."""
    with pytest.raises(RegistrationError) as caught:
        CHANGE_KINDS.new_registry().register(BadKind)
    assert str(caught.value) == (
        "change kind tests.unit.guardrails.test_plugins.BadKind does not meet the contract: "
        "params_model must be a pydantic model class; reversible must be a bool; "
        "apply_many_size must be an int >= 0 (0: one target per activity)"
    )

    class NoCategory(Guardrail[EmptyParams]):
        name = "no-category"
        params_model = int  # type: ignore[assignment]
        default_owner = "x"

        async def check(self, params: EmptyParams, ctx: Any) -> Any:
            return None

    problems = GUARDRAILS.validate(NoCategory)
    assert [p.split(" ")[0] for p in problems] == ["category", "params_model"]
    assert PAGERS.validate(int) == ["it must subclass activities.pagers.Pager"]  # type: ignore[arg-type]


def test_every_plugin_kind_shares_the_base() -> None:
    """Guardrails, change kinds and pagers are :class:`Plugin` s; directories share the kind."""
    assert all(issubclass(base, Plugin) for base in (Guardrail, ChangeKind, Pager))
    assert (GUARDRAILS.kind, CHANGE_KINDS.kind, PAGERS.kind, DIRECTORIES.kind) == (
        "guardrail",
        "change kind",
        "pager",
        "operator directory",
    )
    guardrail = fakes.AlwaysPass()
    assert guardrail.parse_params({}) == EmptyParams()


def test_a_services_dict_is_refused_with_the_fix() -> None:
    """The string-keyed dict of old is refused at once, saying what to write instead."""
    with pytest.raises(
        TypeError, match=r"services must be a guardrails\.base\.Services, not a dict"
    ):
        registry.activities(
            plugins=registry.Plugins.load(guardrails=fakes.guardrails(), kinds=fakes.kinds()),
            services={"temporal_client": object()},  # type: ignore[arg-type]
            bundle=BundleHolder.fixed(OPEN_BUNDLE),
            audit=AuditActivities(SqliteAuditStore(":memory:")),
        )
