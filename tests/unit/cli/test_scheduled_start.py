"""``changeguard start --not-before``: a scheduled start is checked at the edge, naming the field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

import changeguard.client
import cli.main
from cli.changefile import ChangeFileError, load_change
from worker.client import TemporalUnreachable

CHANGE: dict[str, Any] = {
    "kind": "http-deploy",
    "summary": "Roll out web 1.1.0",
    "requester": "alice",
    "team": "web",
    "environment": "prod",
    "targets": [{"id": "web-01"}],
    "params": {"base_url": "http://127.0.0.1:8800", "version": "1.1.0"},
}


@pytest.fixture
def change(tmp_path: Path) -> Path:
    path = tmp_path / "change.yaml"
    path.write_text(yaml.safe_dump(CHANGE))
    return path


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's Temporal connection fails at once: a valid file ends with exit 4, no RPC made."""

    async def refuse(*args: Any, **kwargs: Any) -> Any:
        raise TemporalUnreachable("offline (test): the file was valid")

    monkeypatch.setattr(changeguard.client, "_connect", refuse)  # under changeguard.connect


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main.main(list(argv))
    captured = capsys.readouterr()
    return code, " ".join((captured.out + captured.err).split())


def test_not_before_is_read_with_its_zone(change: Path) -> None:
    """--not-before with an offset becomes the request's aware not_before."""
    at = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    request = load_change(change, not_before=at.astimezone().isoformat())
    assert request.not_before == at and request.not_before.tzinfo is not None


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (
            "2026-12-05T22:00:00",
            "not_before: not_before needs a time zone, e.g. 2026-12-01T18:00:00Z",
        ),
        ("tomorrow", "not_before: Input should be a valid datetime"),
        ("+400d", "is more than 90 days ahead; schedule a change at most that far in advance"),
    ],
    ids=["naive", "garbled", "far-future"],
)
def test_a_bad_not_before_is_refused_naming_the_field(
    change: Path, given: str, expected: str
) -> None:
    """A naive, unreadable or absurdly far not_before is a located problem, not a traceback."""
    if given == "+400d":
        given = (datetime.now(UTC) + timedelta(days=400)).isoformat()
    with pytest.raises(ChangeFileError) as caught:
        load_change(change, not_before=given)
    assert any(expected in p for p in caught.value.problems), caught.value.problems
    assert all(p.startswith("not_before") for p in caught.value.problems)


def test_a_not_before_after_the_deadline_is_refused(tmp_path: Path) -> None:
    """not_before must come before the deadline (the default deadline counts from not_before)."""
    soon = datetime.now(UTC) + timedelta(hours=1)
    path = tmp_path / "change.yaml"
    path.write_text(yaml.safe_dump({**CHANGE, "deadline": soon.isoformat()}))
    with pytest.raises(ChangeFileError) as caught:
        load_change(path, not_before=(soon + timedelta(hours=1)).isoformat())
    assert "is not before the deadline" in caught.value.problems[0]


def test_start_with_not_before_exits_2_or_reaches_the_connection(
    change: Path, capsys: pytest.CaptureFixture[str], offline: None
) -> None:
    """``start --not-before`` naive: exit 2 naming the field; valid: past the edge (exit 4)."""
    code, out = run(capsys, "start", str(change), "--not-before", "2026-12-05T22:00:00")
    assert (code, "Traceback" in out) == (2, False), out
    assert "not_before needs a time zone" in out
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    code, out = run(capsys, "start", str(change), "--not-before", later)
    assert code == 4, out
