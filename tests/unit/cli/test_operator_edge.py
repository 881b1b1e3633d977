"""`changeguard abort|rollback|resume` refuse a bad operator or reason at the edge, never a traceback.

Before, `--reason ''` was signed, sent and crashed the CLI with pydantic's traceback once a server
answered. Now the payload is checked before anything is signed or sent: exit 2, the field named.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import changeguard.client
import cli.main
from worker.client import TemporalUnreachable
from workflows.models import OperatorAction


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Connecting fails at once (exit 4) and is recorded: a refused payload never connects."""
    tried: list[str] = []

    async def refuse(*args: Any, **kwargs: Any) -> Any:
        tried.append("connect")
        raise TemporalUnreachable("offline: the payload was valid")

    monkeypatch.setattr(changeguard.client, "_connect", refuse)
    yield tried


@pytest.mark.parametrize("command", ["abort", "rollback", "resume"])
@pytest.mark.parametrize(
    ("operator", "reason", "said"),
    [
        ("bob", "", "reason: must not be empty"),
        ("", "done", "operator: must not be empty"),
        ("bob", "x" * 5000, "reason: must be at most 2000 characters (got 5000)"),
        ("b\x01ob", "done", "operator: must not contain control characters"),
    ],
)
def test_a_bad_payload_is_refused_before_anything_is_sent(
    command: str,
    operator: str,
    reason: str,
    said: str,
    offline: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = cli.main.main([command, "chg-1", "--operator", operator, "--reason", reason])
    out = " ".join((capsys.readouterr().err).split())  # the console wraps long lines
    assert (code, offline) == (2, [])
    assert f"invalid {command}: {said}" in out
    assert "Traceback" not in out


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operator=st.text(max_size=300), reason=st.text(max_size=2500))
def test_any_operator_and_reason_exit_2_or_reach_the_server(
    operator: str, reason: str, offline: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The property: the CLI refuses (2) exactly what the model refuses; the rest connects (4)."""
    offline.clear()
    try:
        OperatorAction(operator=operator, reason=reason)
        valid = True
    except ValueError:
        valid = False
    code = cli.main.main(["abort", "chg-1", f"--operator={operator}", f"--reason={reason}"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert (code, bool(offline)) == ((4, True) if valid else (2, False))
