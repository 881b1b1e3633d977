"""Edge models: durations, waves and change requests."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from workflows.models import ChangeRequest, Rollout, parse_duration, plan_waves


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("4h", 14400), ("1h30m", 5400), ("2d", 172800), (15, 15)],
)
def test_durations_parse(text: str | int, seconds: int) -> None:
    """Human durations and plain seconds parse to the same timedelta."""
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("bad", ["soon", "4 hours", "-5", "", True])
def test_bad_durations_say_what_works(bad: object) -> None:
    """A malformed duration is rejected with the accepted forms in the message."""
    with pytest.raises(ValueError, match="30s"):
        parse_duration(bad)


def test_waves_are_cumulative() -> None:
    """'1', '25%', '100%' over 10 targets gives waves of 1, 2 and 7 targets."""
    ids = [f"t{i}" for i in range(10)]
    assert plan_waves(ids, ["1", "25%", "100%"]) == [["t0"], ["t1", "t2"], ids[3:]]


def test_waves_drop_empty_and_clamp() -> None:
    """Wave sizes past the target count clamp, and waves adding nothing are dropped."""
    assert plan_waves(["a", "b"], ["5", "50%", "100%"]) == [["a", "b"]]


def test_last_wave_must_cover_everything() -> None:
    """A rollout whose last wave is not 100% is rejected, naming the fix."""
    with pytest.raises(ValidationError, match="last wave must be '100%'"):
        Rollout(waves=["1", "50%"])


def test_change_request_lists_every_problem() -> None:
    """Several mistakes in one request are all reported, each located by field."""
    with pytest.raises(ValidationError) as info:
        ChangeRequest.model_validate(
            {
                "kind": "http-deploy",
                "summary": "",
                "requester": "a",
                "team": "t",
                "environment": "prod",
                "targets": [{"id": "bad id!"}],
                "rollout": {"waves": ["0"], "max_parallel": 0},
                "surprise": 1,
            }
        )
    locations = sorted(".".join(map(str, e["loc"])) for e in info.value.errors())
    assert locations == [
        "rollout.max_parallel",
        "rollout.waves",
        "summary",
        "surprise",
        "targets.0.id",
    ]


def test_duplicate_targets_rejected() -> None:
    """The same target twice is an error naming it."""
    with pytest.raises(ValidationError, match="targets listed twice: a"):
        ChangeRequest(
            kind="k",
            summary="s",
            requester="r",
            team="t",
            environment="e",
            targets=[{"id": "a"}, {"id": "a"}],  # type: ignore[list-item]
        )


def test_keyword_list_fits_the_server_limit() -> None:
    """A long target list is cut to the longest prefix whose JSON fits the value budget."""
    import json

    from workflows.search_attributes import VALUE_BUDGET, fit_keyword_list

    ids = [f"batch_failure_reverts.t{i}" for i in range(200)]
    fitted = fit_keyword_list(ids)
    assert fitted == ids[: len(fitted)]
    assert len(json.dumps(fitted).encode()) <= VALUE_BUDGET
    assert len(json.dumps(ids[: len(fitted) + 1]).encode()) > VALUE_BUDGET
    assert fit_keyword_list(["a", "b"]) == ["a", "b"]
