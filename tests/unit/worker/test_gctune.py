"""The worker's garbage-collector tuning: what it freezes, the thresholds, and the switch."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from worker import gctune
from worker.settings import Settings, SettingsError


class _Node:
    me: _Node | None = None


@pytest.fixture
def restore_gc() -> Iterator[None]:
    """Give the test process its collector back as it was."""
    thresholds = gc.get_threshold()
    frozen = gc.get_freeze_count()
    yield
    if frozen == 0:
        gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restore_gc")
def test_tune_freezes_what_is_alive_and_raises_the_thresholds() -> None:
    """Objects alive at tune time leave the generations; garbage made before is collected first."""
    gc.unfreeze()
    survivor: list[object] = [object()]
    cycle = _Node()
    cycle.me = cycle  # garbage only the cycle collector frees
    ref = weakref.ref(cycle)
    del cycle
    tuning = gctune.tune(True)
    assert tuning.thresholds == (
        gctune.YOUNG_THRESHOLD,
        gctune.OLDER_THRESHOLD,
        gctune.OLDER_THRESHOLD,
    )
    assert gc.get_threshold() == tuning.thresholds
    assert tuning.frozen == gc.get_freeze_count() > 0
    # Frozen objects are in no generation: no collection walks them again.
    assert all(o is not survivor for g in range(3) for o in gc.get_objects(generation=g))
    assert ref() is None, "garbage from start-up was frozen instead of freed"


@pytest.mark.usefixtures("restore_gc")
def test_tune_disabled_leaves_the_collector_alone() -> None:
    """CHANGEGUARD_GC_TUNING=0: CPython's thresholds, nothing frozen."""
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    tuning = gctune.tune(False)
    assert (tuning.frozen, tuning.thresholds, gc.get_threshold()) == (
        0,
        (700, 10, 10),
        (700, 10, 10),
    )


@pytest.mark.parametrize(
    ("raw", "enabled"), [(None, True), ("", True), ("1", True), ("0", False), ("off", False)]
)
def test_gc_tuning_setting(raw: str | None, enabled: bool) -> None:
    """On unless CHANGEGUARD_GC_TUNING says 0/false/no/off."""
    env = {} if raw is None else {"CHANGEGUARD_GC_TUNING": raw}
    assert Settings.from_env(env=env).gc_tuning is enabled


def test_gc_tuning_setting_refuses_other_values() -> None:
    """A value that is neither on nor off names the variable and the accepted values."""
    with pytest.raises(SettingsError, match=r"CHANGEGUARD_GC_TUNING='sometimes': use 1/true"):
        Settings.from_env(env={"CHANGEGUARD_GC_TUNING": "sometimes"})
