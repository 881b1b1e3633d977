"""The platform bundle: loading and merging files, every problem located, hashing, reloading."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from guardrails import bundle as bundle_module
from guardrails.base import Guardrail, default_registry
from guardrails.bundle import BundleError, BundleHolder, bundle_from_mapping, load_bundle
from guardrails.plugins import PluginRegistry

FLOOR = """\
# the floor
unmatched: reject
guardrails:
  - use: environment-boundary
    opt_out: forbidden
  - use: target-lock
"""
PROD = """\
guardrails:
  - id: business-hours
    use: change-window
    applies_to: {environments: [prod]}
    params: {timezone: UTC, allow: ["Mon-Fri 09:00-17:00"]}
signals:
  - {name: error-rate, degraded_above: 0.01, critical_above: 0.5}
responses:
  - {signal: error-rate, state: critical, do: rollback}
pager: log
"""


@pytest.fixture(scope="module")
def registry() -> PluginRegistry[Guardrail[Any]]:
    return default_registry()


def write(directory: Path, **files: str) -> Path:
    directory.mkdir(exist_ok=True)
    for name, text in files.items():
        (directory / name.replace("_", "-", 1).replace("__", ".")).write_text(text)
    return directory


def problems(path: Path, registry: PluginRegistry[Guardrail[Any]]) -> list[str]:
    with pytest.raises(BundleError) as caught:
        load_bundle(path, registry=registry)
    return caught.value.problems


def test_a_directory_merges_in_file_name_order(
    tmp_path: Path, registry: PluginRegistry[Guardrail[Any]]
) -> None:
    """Guardrails, signals and responses concatenate by file name; settings come through."""
    root = tmp_path / "platform"
    root.mkdir()
    (root / "20-prod.yml").write_text(PROD)
    (root / "10-floor.yaml").write_text(FLOOR)
    (root / "README.md").write_text("not part of the bundle")
    bundle = load_bundle(root, registry=registry)
    assert [r.rule_id for r in bundle.policy.guardrails] == [
        "environment-boundary",
        "target-lock",
        "business-hours",
    ]
    assert (bundle.policy.unmatched, bundle.policy.pager, len(bundle.policy.responses)) == (
        "reject",
        "log",
        1,
    )
    assert bundle.files == (str(root / "10-floor.yaml"), str(root / "20-prod.yml"))
    assert bundle.origins == {
        "environment-boundary": f"{root / '10-floor.yaml'}:4",
        "target-lock": f"{root / '10-floor.yaml'}:6",
        "business-hours": f"{root / '20-prod.yml'}:2",
    }


def test_every_problem_is_located_by_file_and_line(
    tmp_path: Path, registry: PluginRegistry[Guardrail[Any]]
) -> None:
    """Shape, registry, floor, duplicate-id and setting problems: all at once, each with file:line."""
    root = tmp_path / "platform"
    root.mkdir()
    (root / "10-floor.yaml").write_text(FLOOR)
    (root / "20-prod.yaml").write_text(
        "unmatched: allow\n"
        "guardrails:\n"
        "  - use: change-window\n"
        "    params: {timezone: Mars/Base}\n"
        "  - use: target-lock\n"
        "    mode: shadow\n"
        "  - use: chnage-window\n"
        "    ownr: me\n"
    )
    a, b = root / "10-floor.yaml", root / "20-prod.yaml"
    assert problems(root, registry) == [
        f"{b}:1: unmatched: set to allow here, but {a}:2 sets reject; set unmatched in one file "
        "only",
        f"{b}:4: guardrails[0].params.timezone: unknown time zone 'Mars/Base'; use an IANA name "
        "such as 'Europe/Berlin' or 'UTC'",
        f"{b}:5: guardrails[1].use: rule id 'target-lock' is already used by guardrails[1] "
        f"({a}:6); give each rule its own id (id: …), e.g. to use one guardrail twice",
        f"{b}:5: guardrails[1]: rule 'target-lock' relaxes the floor guardrail target-lock "
        "(mode: shadow); say why with reason: '…' (every report shows it)",
        f"{b}:7: guardrails[2].use: no guardrail named 'chnage-window' is registered (known: "
        + ", ".join(registry.names())
        + ")",
        f"{b}:8: guardrails[2].ownr: unknown field",
    ]


def test_a_setting_twice_with_one_value_is_fine(
    tmp_path: Path, registry: PluginRegistry[Guardrail[Any]]
) -> None:
    """Two files may both say `unmatched: reject`; only a disagreement is a problem."""
    root = tmp_path / "platform"
    root.mkdir()
    (root / "a.yaml").write_text(FLOOR)
    (root / "b.yaml").write_text("unmatched: reject\n")
    assert load_bundle(root, registry=registry).policy.unmatched == "reject"


def test_file_level_problems(tmp_path: Path, registry: PluginRegistry[Guardrail[Any]]) -> None:
    """A missing path, an empty directory, bad YAML and a non-mapping file are each named."""
    assert problems(tmp_path / "nope", registry) == [
        f"{tmp_path / 'nope'}: no such file or directory"
    ]
    (tmp_path / "empty").mkdir()
    assert problems(tmp_path / "empty", registry) == [
        f"{tmp_path / 'empty'}: the directory holds no *.yaml or *.yml file"
    ]
    root = tmp_path / "bad"
    root.mkdir()
    (root / "a.yaml").write_text("guardrails:\n  - use: x\n   params: [\n")
    (root / "b.yaml").write_text("- use: change-window\n")
    found = problems(root, registry)
    assert found[0].startswith(f"{root / 'a.yaml'}:3:") and "invalid YAML" in found[0]
    assert found[1] == (
        f"{root / 'b.yaml'}:1: a bundle file must be a mapping (guardrails, signals, responses, "
        "unmatched, pager, page_on_reject, identity), not list"
    )


def test_unknown_top_level_fields_are_refused(registry: PluginRegistry[Guardrail[Any]]) -> None:
    """A mistyped setting is an error rather than ignored (e.g. `unmatch: allow`)."""
    with pytest.raises(BundleError) as caught:
        bundle_from_mapping({"unmatch": "allow"}, registry=registry)
    assert caught.value.problems == ["inline: unmatch: unknown field"]


def test_the_hash_ignores_comments_and_order(tmp_path: Path) -> None:
    """Comments and key order do not change the bundle's hash; meaning does."""
    (tmp_path / "a.yaml").write_text(FLOOR)
    (tmp_path / "b.yaml").write_text(
        "guardrails:\n  - {opt_out: forbidden, use: environment-boundary}\n"
        "  - use: target-lock   # locks\nunmatched: reject\n"
    )
    (tmp_path / "c.yaml").write_text(FLOOR.replace("reject", "allow"))
    a, b, c = (load_bundle(tmp_path / f"{n}.yaml").hash for n in "abc")
    assert (a == b, a == c) == (True, False)


def test_reload_takes_a_valid_edit_and_refuses_an_invalid_one(
    tmp_path: Path, registry: PluginRegistry[Guardrail[Any]]
) -> None:
    """A valid edit replaces the bundle; an invalid one is refused once, logged, counted, reported."""
    path = tmp_path / "policy.yaml"
    path.write_text(FLOOR)
    holder = BundleHolder.load(path, registry=registry)
    refusals: list[int] = []
    holder.on_refused = lambda: refusals.append(1)
    first = holder.current_hash()
    assert holder.check() is False  # nothing changed

    path.write_text(FLOOR + PROD.split("signals:")[0].replace("guardrails:\n", ""))
    assert holder.check() is True
    second = holder.current_hash()
    assert second != first and holder.warning == ""

    path.write_text(FLOOR + "  - use: nope\n")
    with capture_logs() as logs:
        assert holder.check() is False
        assert holder.check() is False  # the same refused content is not refused again
    assert holder.current_hash() == second
    assert refusals == [1]
    assert holder.warning.startswith("an edit of the policy bundle at ")
    assert "guardrails[2].use: no guardrail named 'nope'" in holder.warning
    assert holder.warning.endswith(f"still judging by bundle {second}")
    [entry] = logs
    assert entry["log_level"] == "error"
    assert entry["bundle_hash"] == second
    assert entry["problems"][0].startswith(f"{path}:7: guardrails[2].use: no guardrail named")

    path.write_text(FLOOR)  # put back: valid again, the warning goes
    assert holder.check() is True
    assert (holder.current_hash(), holder.warning) == (first, "")


async def test_the_watcher_picks_up_an_edit(
    tmp_path: Path, registry: PluginRegistry[Guardrail[Any]]
) -> None:
    """A running watcher reloads an edited directory within its interval, and stops cleanly."""
    root = write(tmp_path / "platform")
    (root / "10-floor.yaml").write_text(FLOOR)
    holder = BundleHolder.load(root, registry=registry)
    holder.interval = 0.05
    first = holder.current_hash()
    holder.start()
    try:
        (root / "20-prod.yaml").write_text(PROD)
        for _ in range(100):
            if holder.current_hash() != first:
                break
            await asyncio.sleep(0.05)
        assert [r.rule_id for r in holder.current().policy.guardrails][-1] == "business-hours"
    finally:
        await holder.stop()
    assert holder._task is None


def test_an_empty_file_is_refused_never_read_as_a_bundle_without_rules(
    tmp_path: Path, registry: PluginRegistry[Guardrail[Any]]
) -> None:
    """An empty or comment-only file (a truncated save) is a located problem; `{}` is allowed."""
    for text in ("", "# only a comment\n", "\n\n"):
        (tmp_path / "policy.yaml").write_text(text)
        assert problems(tmp_path / "policy.yaml", registry) == [
            f"{tmp_path / 'policy.yaml'}:1: the file is empty (or only comments); a bundle file "
            "must be a mapping — write `{}` for a deliberately empty file"
        ]
    (tmp_path / "policy.yaml").write_text("{}\n")
    assert load_bundle(tmp_path / "policy.yaml", registry=registry).policy.guardrails == []


def test_a_look_in_the_middle_of_a_write_waits_for_the_write_to_finish(
    tmp_path: Path, registry: PluginRegistry[Guardrail[Any]]
) -> None:
    """A look that catches a file truncated but not yet written loads the finished file, not that.

    The bug this guards: the watcher read an editor's truncated file as a bundle without rules,
    put it in force, and only then refused the finished (invalid) file against the wrong hash.
    """
    path = tmp_path / "policy.yaml"
    path.write_text(FLOOR)
    holder = BundleHolder.load(path, registry=registry)
    first = holder.current_hash()
    path.write_text("")  # truncated: the editor has not written yet
    final = FLOOR + "  - use: nope\n"
    looks = 0
    real = bundle_module._fingerprint

    def fingerprint(root: Path) -> tuple[tuple[str, str], ...]:
        nonlocal looks
        looks += 1
        if looks == 2:  # the write lands between the first look and the settling look
            path.write_text(final)
        return real(root)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bundle_module, "_fingerprint", fingerprint)
        mp.setattr(bundle_module, "SETTLE", 0.0)
        assert holder.check() is False
    assert holder.current_hash() == first  # the empty file was never in force
    assert "guardrails[2].use: no guardrail named 'nope'" in holder.warning
    assert "the file is empty" not in holder.warning
    assert looks >= 3  # first look, a differing look, a look that agreed


def test_a_fixed_bundle_never_reloads() -> None:
    """A bundle given directly (tests, embedded use) is validated and held as it is."""
    holder = BundleHolder.fixed({"unmatched": "allow"})
    assert (holder.check(), holder.current().policy.unmatched) == (False, "allow")
    assert holder.current_hash() == holder.current().hash
