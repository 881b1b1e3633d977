"""The edge never crashes: every malformed change file exits 2 with its problem located.

Most cases run the real ``changeguard`` entry in-process (:func:`cli.main.main`); a few run the
installed command in a subprocess. Precise messages are asserted on :func:`load_change` itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

import changeguard.client
import cli.main
from cli.changefile import ChangeFileError, load_change
from guardrails.yamlfile import YamlError, read_yaml
from worker.client import TemporalUnreachable
from workflows.models import REQUEST_MAX_BYTES

Write = Callable[..., Path]
"""The ``write`` fixture: ``write(content, name="change.yaml") -> Path``."""

VALID: dict[str, Any] = {
    "kind": "http-deploy",
    "summary": "Roll out web 1.1.0",
    "requester": "alice",
    "team": "web",
    "environment": "prod",
    "targets": [{"id": "web-01"}, {"id": "web-02"}],
    "params": {"base_url": "http://127.0.0.1:8800", "version": "1.1.0"},
    "rollout": {"waves": ["1", "100%"], "bake": "2s"},
}
VALID_YAML = yaml.safe_dump(VALID, sort_keys=False)


def problems(path: Path) -> list[str]:
    """The problems load_change finds in ``path`` (it must find some)."""
    with pytest.raises(ChangeFileError) as caught:
        load_change(path)
    return caught.value.problems


@pytest.fixture
def write(tmp_path: Path) -> Write:
    """Write a change file (text or bytes) under tmp_path and return its path."""

    def _write(content: str | bytes, name: str = "change.yaml") -> Path:
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    return _write


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's Temporal connection fails at once: a valid file ends with exit 4, no RPC made."""

    async def refuse(*args: Any, **kwargs: Any) -> Any:
        raise TemporalUnreachable("offline (test): the file was valid")

    monkeypatch.setattr(changeguard.client, "_connect", refuse)  # under changeguard.connect


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run ``changeguard ARGV`` in-process; its exit code and its output, whitespace collapsed."""
    code = cli.main.main(list(argv))
    captured = capsys.readouterr()
    return code, " ".join((captured.out + captured.err).split())


def test_a_valid_file_is_read_and_its_policy_path_inlined(
    write: Write,
) -> None:
    """A policy path is read relative to the change file and sent inline, as a mapping."""
    write(
        "guardrails:\n  - {id: extra-health, use: http-health, params: {url: 'http://x/h'}}\n",
        "p.yaml",
    )
    request = load_change(write(VALID_YAML + "policy: p.yaml\n"))
    assert request.policy == {
        "guardrails": [
            {"id": "extra-health", "use": "http-health", "params": {"url": "http://x/h"}}
        ]
    }
    assert request.change_id is None  # the CLI draws one at the edge, not the model


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(
            "kind: http-deploy\npolicy: {}\nteam: web\npolicy: {guardrails: []}\n",
            ["line 4, column 1: duplicate key 'policy' (first at line 2)"],
            id="duplicate-key",
        ),
        pytest.param(
            "kind: http-deploy\nlabels: &l {a: b}\nother: *l\n",
            ["line 3, column 8: alias *l is not allowed here; write the value out"],
            id="alias",
        ),
        pytest.param(
            "a: &a [*a]\n",
            ["line 1, column 8: alias *a is not allowed here; write the value out"],
            id="recursive-anchor",
        ),
        pytest.param(
            "params: " + "[" * 60 + "]" * 60 + "\n",
            ["line 1, column 58: nested deeper than 50 levels"],
            id="deep-nesting",
        ),
        pytest.param(
            "kind: x\n1: y\non: z\n",
            [
                "line 2, column 1: key '1' is not a string (YAML reads it as int); quote it",
                "line 3, column 1: key 'on' is not a string (YAML reads it as bool); quote it",
            ],
            id="non-string-keys",
        ),
        pytest.param(
            "kind: !!python/object:os.system ls\n",
            [
                "line 1, column 7: invalid YAML: could not determine a constructor for the tag "
                "'tag:yaml.org,2002:python/object:os.system'"
            ],
            id="python-tag",
        ),
        pytest.param(
            "kind: [unclosed\n",
            [
                "line 2, column 1: invalid YAML: did not find expected ',' or ']' (while parsing a "
                "flow sequence)"
            ],
            id="syntax",
        ),
        pytest.param(
            "",
            [
                "the file must hold a mapping of ChangeRequest fields (kind, summary, …), "
                "not an empty file"
            ],
            id="empty",
        ),
        pytest.param(
            "- a\n- b\n",
            ["the file must hold a mapping of ChangeRequest fields (kind, summary, …), not a list"],
            id="list",
        ),
    ],
)
def test_malformed_yaml_is_located(write: Write, content: str, expected: list[str]) -> None:
    """Each malformed file is refused with the problem located by line and column."""
    assert problems(write(content)) == expected


def test_binary_non_utf8_and_oversized_files_are_refused(
    write: Write,
) -> None:
    """Binary, non-UTF-8 and over-2-MB files are refused, each with its reason."""
    assert problems(write(b"\x7fELF\x02\x01\x00\x00binary")) == [
        "is a binary file (a NUL byte at offset 6), not YAML text"
    ]
    assert problems(write(b"kind: http-deploy\nsummary: caf\xe9\n")) == [
        "line 2, column 13: is not UTF-8 text (byte 0xe9 cannot start or continue a character); "
        "save it as UTF-8"
    ]
    assert problems(write("# " + "x" * 2_000_000 + "\n")) == [
        "is larger than 2,000,000 bytes; a file this large is refused"
    ]
    assert problems(write("kind: a\x07b\n")) == [
        "line 1, column 8: character U+0007 is not allowed in YAML text (control characters are "
        "refused)"
    ]


@pytest.mark.parametrize(
    ("rollout", "expected"),
    [
        (
            {"bake": ".inf"},
            "line 3, column 9: .inf is not a finite number (infinity and NaN are refused)",
        ),
        (
            {"bake": "1.0e+400"},
            "line 3, column 9: 1.0e+400 is not a finite number (infinity and NaN are refused)",
        ),
        (
            {"bake": "999999999999d"},
            "rollout.bake: a duration must be finite and at most 3650d (ten years)",
        ),
        (
            {"bake": "1e308"},
            "rollout.bake: '1e308' is not a duration; use forms such as '30s', '10m', '4h' or '1h30m'",
        ),
        (
            {"bake": "100000000000000000000"},
            "line 3, column 9: integer 100000000000000000000 does not fit in 64 bits",
        ),
        ({"bake": "8d"}, "rollout.bake: bake must be at most 7d"),
    ],
)
def test_absurd_durations_are_located(write: Write, rollout: dict[str, str], expected: str) -> None:
    """Infinite, NaN, huge and over-long durations are refused at their place, never a traceback."""
    base = {k: v for k, v in VALID.items() if k != "rollout"}
    text = (
        yaml.safe_dump(base, sort_keys=False)
        + "rollout:\n  waves: ['100%']\n  bake: "
        + rollout["bake"]
        + "\n"
    )
    lines = text.splitlines()
    bake_line = next(i for i, line in enumerate(lines) if line.startswith("  bake:")) + 1
    expected = expected.replace("line 3,", f"line {bake_line},")
    assert expected in problems(write(text))


def test_nan_anywhere_is_refused(write: Write) -> None:
    """NaN in params (which no JSON peer can read) is refused at its line."""
    found = problems(write(VALID_YAML + "deadline: .nan\n"))
    assert found[0].endswith(".nan is not a finite number (infinity and NaN are refused)")


def test_a_deadline_in_the_past_is_refused(write: Write) -> None:
    """A deadline that has passed is refused at the edge, naming when it was."""
    path = write(VALID_YAML + "deadline: 2020-01-01T00:00:00Z\n")
    now = datetime(2026, 6, 1, 12, tzinfo=UTC)
    with pytest.raises(ChangeFileError) as caught:
        load_change(path, now=now)
    assert caught.value.problems == [
        "deadline: must be in the future (it is 2020-01-01 00:00:00Z, now 2026-06-01 12:00:00Z)"
    ]
    future = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert load_change(write(VALID_YAML + f"deadline: {future}\n")).deadline is not None


def test_a_request_over_the_payload_limit_is_refused_before_any_rpc(
    write: Write,
    capsys: pytest.CaptureFixture[str],
    offline: None,
) -> None:
    """A request larger than REQUEST_MAX_BYTES as JSON exits 2 (not 4: nothing was sent)."""
    blob = "x" * 1000
    params = {**VALID["params"], "notes": [blob] * (REQUEST_MAX_BYTES // 1000 + 10)}
    path = write(yaml.safe_dump({**VALID, "params": params}))
    found = problems(path)
    assert any(p.startswith("the request is 1,0") and "at most 1,000,000 bytes" in p for p in found)
    code, out = run(capsys, "checks", str(path))
    assert code == 2
    assert "Traceback" not in out


def test_policy_problems_are_located_under_policy(
    write: Write,
) -> None:
    """A policy file's own problems (duplicate keys, a missing file, a list) are under policy."""
    write("guardrails: []\nguardrails: []\n", "dup.yaml")
    write("- a\n", "list.yaml")
    assert problems(write(VALID_YAML + "policy: dup.yaml\n")) == [
        "policy: dup.yaml:2:1: duplicate key 'guardrails' (first at line 1)"
    ]
    assert problems(write(VALID_YAML + "policy: missing.yaml\n")) == [
        "policy: missing.yaml: no such file"
    ]
    assert problems(write(VALID_YAML + "policy: list.yaml\n")) == [
        "policy: list.yaml: must hold a mapping of additions (guardrails, signals, responses), "
        "not a list"
    ]
    found = problems(write(VALID_YAML + "policy: {guardrails: [{use: no-such-guardrail}]}\n"))
    assert found and all(p.startswith("policy") for p in found)


def test_model_problems_are_listed_by_field(write: Write) -> None:
    """Wrong types and unknown fields are each named by their dotted path."""
    bad = {**VALID, "targets": [{"id": "web 01"}], "team": "x" * 500, "colour": "blue"}
    found = problems(write(yaml.safe_dump(bad)))
    assert sorted(p.split(":")[0] for p in found) == ["colour", "targets.0.id", "team"]


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\x01\x02\x03",
        b"\xff\xfe k\x00i\x00n\x00d\x00",
        ("kind: a\n" + "x: [" * 200 + "]" * 200).encode(),
        b"a: &a [*a, *a]\nb: &b [*a, *a]\n",
        b"kind: http-deploy\nkind: http-deploy\n",
        VALID_YAML.encode() + b"rollout: {bake: .inf}\n",
        VALID_YAML.encode() + b"deadline: 1999-01-01T00:00:00Z\n",
        VALID_YAML.encode() + b"policy: /dev/null/nothing\n",
        VALID_YAML.encode() + b'policy: "a\\0b"\n',
    ],
    ids=["binary", "utf16", "deep", "bomb", "dup", "inf", "past", "policy-enotdir", "policy-nul"],
)
def test_the_cli_exits_2_without_a_traceback(
    write: Write,
    capsys: pytest.CaptureFixture[str],
    offline: None,
    content: bytes,
) -> None:
    """``changeguard checks FILE`` and ``start FILE`` exit 2 with 'invalid change file'."""
    path = write(content)
    for command in ("checks", "start"):
        code, out = run(capsys, command, str(path))
        assert (code, "Traceback" in out) == (2, False), out
        assert "invalid change file" in out


def test_a_valid_file_reaches_the_connection(
    write: Write,
    capsys: pytest.CaptureFixture[str],
    offline: None,
) -> None:
    """A valid file gets past the edge: the (refused) connection is what stops it, exit 4."""
    code, out = run(capsys, "checks", str(write(VALID_YAML)))
    assert code == 4, out


@pytest.mark.parametrize(
    "content",
    [
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        b"params: " + b"[" * 5000 + b"]" * 5000,
        b"kind: x\npolicy: a.yaml\npolicy: b.yaml\n",
    ],
    ids=["png", "very-deep", "duplicate-policy"],
)
def test_the_installed_command_exits_2(tmp_path: Path, content: bytes) -> None:
    """The real ``changeguard`` executable exits 2 with the problem on stderr, no traceback."""
    path = tmp_path / "change.yaml"
    path.write_bytes(content)
    exe = Path(sys.executable).with_name("changeguard")
    done = subprocess.run(
        [str(exe), "checks", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "TEMPORAL_ADDRESS": "127.0.0.1:1", "COLUMNS": "300"},
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert "invalid change file" in done.stderr


# --------------------------------------------------------------------------------------------------
# The reader itself (what policy and directory loaders can adopt)
# --------------------------------------------------------------------------------------------------


def test_read_yaml_keeps_json_values_and_timestamps_as_written() -> None:
    """Timestamps stay strings, merges work with aliases allowed, numbers are plain."""
    text = "base: &b {x: 1}\nd: {<<: *b, y: 2.5}\nat: 2026-12-01T18:00:00Z\nn: null\n"
    assert read_yaml(text, "t") == {
        "base": {"x": 1},
        "d": {"x": 1, "y": 2.5},
        "at": "2026-12-01T18:00:00Z",
        "n": None,
    }
    assert json.loads(json.dumps(read_yaml('{"a": [1, "b"]}', "j"))) == {"a": [1, "b"]}


def test_read_yaml_refuses_alias_bombs_and_recursion() -> None:
    """An alias bomb is refused by what it expands to; a recursive alias at once."""
    lines = ["a: &l0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]")
    bomb = "\n".join(lines) + "\n"
    with pytest.raises(YamlError) as caught:
        read_yaml(bomb, "bomb", max_aliases=1000)
    assert caught.value.problems == [
        "bomb:1:1: expands to more than 200,000 values once aliases are expanded (an alias bomb?)"
    ]
    with pytest.raises(YamlError) as caught:
        read_yaml("a: &a {b: *a}\n", "rec")
    assert caught.value.problems == [
        "rec:1:11: alias *a refers to a value that contains it (a recursive structure)"
    ]
    with pytest.raises(YamlError) as caught:
        read_yaml("a: &a 1\n" + "".join(f"b{i}: *a\n" for i in range(60)), "many")
    assert caught.value.problems == ["many:52:6: more than 50 aliases (*name)"]
