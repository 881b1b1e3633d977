"""The chaos world's own mechanics that a campaign relies on (no containers needed)."""

from __future__ import annotations

import docker.errors
import pytest

from tests.chaos.harness import freeze
from tests.servers import ServerError


class _Engine:
    """A container whose ``pause`` the engine refuses ``refusals`` times with ``explanation``."""

    short_id = "c0ff3c6fc5c4"

    def __init__(self, refusals: int, explanation: str) -> None:
        self.refusals, self.explanation, self.calls = refusals, explanation, 0

    def pause(self) -> None:
        self.calls += 1
        if self.calls <= self.refusals:
            raise docker.errors.APIError("500 Server Error", explanation=self.explanation)


FREEZER = "Cannot pause container c0ff3c6fc5c4: OCI runtime pause failed: unable to freeze: unknown"


def test_a_freezer_that_gives_up_once_is_asked_again_and_the_partition_happens() -> None:
    """CI seed 97942: one "unable to freeze" left a campaign without its audit partition."""
    engine = _Engine(refusals=2, explanation=FREEZER)
    freeze(engine, pause=0)
    assert engine.calls == 3


def test_a_freezer_that_never_freezes_is_reported_with_the_engines_reason() -> None:
    engine = _Engine(refusals=99, explanation=FREEZER)
    with pytest.raises(ServerError, match=r"refused after 4 attempt.*unable to freeze"):
        freeze(engine, attempts=4, pause=0)
    assert engine.calls == 4


def test_any_other_refusal_is_not_retried() -> None:
    engine = _Engine(refusals=1, explanation="Container c0ff3c6fc5c4 is not running")
    with pytest.raises(ServerError, match=r"after 1 attempt.*is not running"):
        freeze(engine, pause=0)
    assert engine.calls == 1
