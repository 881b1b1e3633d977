"""The one located-YAML reader: the line map, and policy files and bundles read through it."""

from __future__ import annotations

from pathlib import Path

import pytest

from guardrails.bundle import BundleError, load_bundle
from guardrails.policy import PolicyError, load_policy
from guardrails.yamlfile import Located, format_path, parse_path, read_located, read_yaml

TEXT = """\
unmatched: reject
guardrails:
  - use: environment-boundary
    opt_out: forbidden
  - id: hours
    use: change-window
    params: {timezone: UTC}
"""


def test_read_located_maps_every_key_and_item_to_its_line() -> None:
    """Each key and list item has its line; a path not written falls back to its ancestor."""
    located = read_located(TEXT, "p.yaml")
    assert located.data == read_yaml(TEXT, "p.yaml")
    assert dict(located.lines) == {
        ("unmatched",): 1,
        ("guardrails",): 2,
        ("guardrails", 0): 3,
        ("guardrails", 0, "use"): 3,
        ("guardrails", 0, "opt_out"): 4,
        ("guardrails", 1): 5,
        ("guardrails", 1, "id"): 5,
        ("guardrails", 1, "use"): 6,
        ("guardrails", 1, "params"): 7,
        ("guardrails", 1, "params", "timezone"): 7,
    }
    assert located.line(("guardrails", 1, "params", "allow", 0)) == 7
    assert located.line(("signals", 0)) is None
    assert read_located("", "empty.yaml") == Located(None)


def test_dotted_paths_parse_and_format_back() -> None:
    """``guardrails[1].params.timezone`` and its tuple form convert both ways."""
    path = ("guardrails", 1, "params", "timezone")
    assert parse_path("guardrails[1].params.timezone") == path
    assert format_path(path) == "guardrails[1].params.timezone"


def test_a_bundle_with_a_duplicate_key_is_refused_with_both_lines(tmp_path: Path) -> None:
    """The bundle is read by the strict reader: a second ``unmatched`` no longer wins silently."""
    path = tmp_path / "policy.yaml"
    path.write_text("unmatched: reject\nguardrails: []\nunmatched: allow\n")
    with pytest.raises(BundleError) as caught:
        load_bundle(path)
    assert caught.value.problems == [f"{path}:3:1: duplicate key 'unmatched' (first at line 1)"]


def test_a_bundle_yaml_error_is_located_by_file_line_and_column(tmp_path: Path) -> None:
    """A syntax error in one bundle file reads ``file:line:col: invalid YAML: …``."""
    path = tmp_path / "policy.yaml"
    path.write_text("guardrails: [\n")
    with pytest.raises(BundleError) as caught:
        load_bundle(path)
    [problem] = caught.value.problems
    assert problem.startswith(f"{path}:2:1: invalid YAML: ")


def test_a_policy_file_is_read_by_the_same_reader(tmp_path: Path) -> None:
    """A request's policy file refuses duplicate keys and tags, located, like every other file."""
    (tmp_path / "p.yaml").write_text("guardrails: []\nguardrails: []\nresponses: !!set {a}\n")
    with pytest.raises(PolicyError) as caught:
        load_policy("p.yaml", base_dir=tmp_path)
    assert caught.value.problems == [
        "p.yaml:2:1: duplicate key 'guardrails' (first at line 1)",
        "p.yaml:3:12: tag !!set is not supported: use mappings, lists, strings, numbers, booleans "
        "and null",
    ]
