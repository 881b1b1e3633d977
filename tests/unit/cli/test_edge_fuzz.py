"""Property: whatever a change file holds, the edge exits 2 with a located problem, or accepts it.

Generated change files (YAML and JSON structures shaped like a ChangeRequest with wrong types,
nulls, huge and odd values; valid files with random bytes spliced in; random bytes) go through the
real ``changeguard checks`` entry in-process. The Temporal connection is replaced by one that fails
at once, so an accepted file ends with exit 4 and no RPC is ever made. After each: exit 2 (or a
request :func:`load_change` accepts), and never a traceback.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import changeguard.client
import cli.main
from cli.changefile import ChangeFileError, load_change
from worker.client import TemporalUnreachable

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=False,
)

VALID: dict[str, Any] = {
    "kind": "http-deploy",
    "summary": "Roll out web 1.1.0",
    "requester": "alice",
    "team": "web",
    "environment": "prod",
    "targets": [{"id": "web-01"}, {"id": "web-02"}],
    "params": {"base_url": "http://127.0.0.1:8800", "version": "1.1.0"},
    "rollout": {"waves": ["1", "100%"], "bake": "2s", "max_parallel": 2},
}
FIELDS = [*VALID, "change_id", "policy", "deadline", "not_before", "signature"]

odd_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            " ",
            "\u202e",
            "x" * 5000,
            "1e308",
            "999999999999d",
            ".inf",
            "-1s",
            "P9999999999D",
            "2020-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "0001-01-01T00:00:00+14:00",
            "../../etc/passwd",
            "/dev/zero",
            "a\x00b",
            "100%",
            "0%",
            "101%",
        ]
    ),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    odd_text,
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(odd_text, inner, max_size=5)
    ),
    max_leaves=25,
)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    """A request-shaped mapping: some fields valid, some replaced by odd values, some missing."""
    out: dict[str, Any] = {}
    for name in FIELDS:
        choice = draw(st.sampled_from(["valid", "valid", "odd", "missing"]))
        if choice == "valid" and name in VALID:
            out[name] = VALID[name]
        elif choice == "odd":
            out[name] = draw(values)
    return out


def dump(data: Any, as_json: bool) -> bytes:
    """YAML or JSON text of generated data (JSON may hold NaN and Infinity, as careless tools do)."""
    if as_json:
        return json.dumps(data).encode("utf-8", "surrogatepass")
    return yaml.safe_dump(data, allow_unicode=True).encode("utf-8", "surrogatepass")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory for the generated files (and a policy file some of them name)."""
    path = tmp_path_factory.mktemp("fuzz")
    (path / "policy.yaml").write_text("guardrails: []\n")
    return path


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI's connection fails at once: an accepted file exits 4, and nothing is sent."""

    async def refuse(*args: Any, **kwargs: Any) -> Any:
        raise TemporalUnreachable("offline (fuzz): the file was valid")

    monkeypatch.setattr(changeguard.client, "_connect", refuse)  # under changeguard.connect
    yield


def check(path: Path, content: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    """The property: exit 2 and no traceback, or a file the edge accepts (exit 4 offline)."""
    path.write_bytes(content)
    code = cli.main.main(["checks", str(path)])
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert "Traceback" not in out, out
    assert "could not be validated" not in out, out  # a validator raised something unexpected
    if code == 2:
        assert "invalid change file" in out, out
        return
    assert code == 4, (code, out)
    try:
        load_change(path)
    except ChangeFileError as exc:  # pragma: no cover - the property failing
        pytest.fail(f"exit {code} for a file the edge refuses: {exc}")


@FUZZ
@given(data=requests(), as_json=st.booleans())
def test_generated_requests(
    data: dict[str, Any], as_json: bool, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Request-shaped structures with wrong types, nulls, huge and odd values."""
    check(workdir / "req.yaml", dump(data, as_json), capsys)


@FUZZ
@given(data=values, as_json=st.booleans())
def test_generated_documents(
    data: Any, as_json: bool, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Any JSON-like document at all (lists, scalars, nested mappings)."""
    check(workdir / "doc.yaml", dump(data, as_json), capsys)


@FUZZ
@given(
    at=st.integers(min_value=0, max_value=10_000),
    junk=st.binary(min_size=1, max_size=12),
    cut=st.booleans(),
)
def test_valid_files_with_bytes_spliced_in(
    at: int, junk: bytes, cut: bool, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A valid file with random bytes inserted (or replacing a stretch) somewhere in it."""
    base = yaml.safe_dump({**VALID, "policy": "policy.yaml"}).encode()
    at %= len(base)
    content = base[:at] + junk + base[at + (len(junk) if cut else 0) :]
    check(workdir / "spliced.yaml", content, capsys)


@FUZZ
@given(content=st.binary(max_size=200))
def test_random_bytes(content: bytes, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Random bytes are refused (or, by chance, a valid YAML document that is then refused)."""
    check(workdir / "bytes.yaml", content, capsys)


@FUZZ
@given(
    keys=st.lists(st.sampled_from([*FIELDS, "<<", "? ", "&a", "*a", "!!binary"]), max_size=6),
    depth=st.integers(min_value=0, max_value=120),
    number=st.sampled_from([".inf", "-.inf", ".nan", "1e999", "0x" + "f" * 40, "1_000", "0o17"]),
)
def test_hand_written_oddities(
    keys: list[str],
    depth: int,
    number: str,
    workdir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Duplicate keys, merge keys, anchors, tags, deep nesting and odd numbers written as text."""
    lines = [f"{k}: {number}" for k in keys]
    lines.append("params: " + "[" * depth + "]" * depth)
    text = yaml.safe_dump(VALID) + "\n".join(lines) + "\n"
    check(workdir / "odd.yaml", text.encode(), capsys)


def test_the_generator_covers_valid_requests(workdir: Path) -> None:
    """The base request the strategies start from is valid (else the property proves little)."""
    path = workdir / "valid.yaml"
    path.write_text(yaml.safe_dump(VALID))
    request = load_change(path)
    assert request.kind == "http-deploy"
    assert not math.isnan(request.rollout.bake.total_seconds())
