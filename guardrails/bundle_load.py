"""Loading the platform's policy bundle: read, merged, validated, hashed; every problem located.

A bundle is one YAML file, or a directory whose ``*.yaml`` and ``*.yml`` files are merged in
file-name order (``guardrails``, ``signals`` and ``responses`` concatenated; each other setting,
such as ``unmatched``, ``pager`` or ``identity``, may be set by one file, or by several only to the
same value). Each file is read by :func:`guardrails.yamlfile.read_located`, whose line map locates
every problem the model and the rule checks find by file and line
(``platform/10-prod.yaml:7: guardrails[1].params.timezone: unknown time zone``). Holding the bundle
and reloading it on an edit is :mod:`guardrails.bundle`'s part.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from guardrails.policy import (
    GuardrailRegistry,
    GuardrailRule,
    PlatformBundle,
    PolicyError,
    policy_hash,
    pydantic_problems,
    rule_problems,
)
from guardrails.yamlfile import PATH, Located, YamlError, format_path, parse_path, read_located
from workflows.types import excerpt

__all__ = [
    "LIST_SECTIONS",
    "Bundle",
    "BundleError",
    "bundle_files",
    "bundle_from_mapping",
    "load_bundle",
]

LIST_SECTIONS = ("guardrails", "signals", "responses")
"""Sections concatenated across the files of a bundle directory; everything else is a setting."""
_SIBLING = re.compile(r"\b(guardrails|signals|responses)\[(\d+)\]")
"""Another list item named in a message (the other half of a clash), located in its own file."""


class BundleError(PolicyError):
    """The bundle is missing, unreadable or invalid; ``problems`` lists each, located."""

    HEADLINE = "policy bundle {source} is invalid ({count})"


@dataclass(frozen=True)
class Bundle:
    """A validated platform bundle and where it came from.

    Attributes:
        policy: the merged, validated bundle.
        hash: its :func:`~guardrails.policy.policy_hash` (comments and key order do not count).
        source: the path it was loaded from, or ``inline``.
        files: the files merged, in order.
        origins: each platform rule id → where it is written (``file:line``), for messages.
    """

    policy: PlatformBundle
    hash: str
    source: str = "inline"
    files: tuple[str, ...] = ()
    origins: dict[str, str] = field(default_factory=dict)


def bundle_files(path: Path) -> list[Path]:
    """The files a bundle path stands for: the file itself, or a directory's YAML files by name."""
    if path.is_dir():
        return sorted(
            (p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()),
            key=lambda p: p.name,
        )
    return [path]


@dataclass
class _Merge:
    """The merged document and, for every part of it, the file and line it came from."""

    doc: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    files: dict[str, Located] = field(default_factory=dict)
    """Per file read (in order): its document and the line of every key and item."""
    items: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    """Per list section: merged index → (file, index in that file)."""
    settings: dict[str, str] = field(default_factory=dict)
    """Per setting: the file that set it."""

    def line(self, label: str, path: tuple[Any, ...]) -> int | None:
        located = self.files.get(label)
        return located.line(path) if located is not None else None

    def add(self, label: str, located: Located) -> None:
        self.files[label] = located
        raw = located.data
        if raw is None:
            # An empty file is refused, never read as "no rules": a truncated save or a write
            # caught half-way would otherwise put a bundle without checks in force.
            self.problems.append(
                f"{label}:1: the file is empty (or only comments); a bundle file must be a "
                "mapping — write `{}` for a deliberately empty file"
            )
            return
        if not isinstance(raw, dict):
            self.problems.append(
                f"{label}:1: a bundle file must be a mapping (guardrails, signals, responses, "
                f"unmatched, pager, page_on_reject, identity), not {type(raw).__name__}"
            )
            return
        for key, value in raw.items():
            key = str(key)
            if key in LIST_SECTIONS:
                if not isinstance(value, list):
                    line = self.line(label, (key,))
                    self.problems.append(
                        f"{label}:{line}: {key}: must be a list, not {type(value).__name__}"
                    )
                    continue
                index = self.items.setdefault(key, [])
                for i, item in enumerate(value):
                    index.append((label, i))
                    self.doc.setdefault(key, []).append(item)
            elif key in self.settings and self.doc.get(key) != value:
                first = self.settings[key]
                self.problems.append(
                    f"{label}:{self.line(label, (key,))}: {key}: set to {excerpt(value, 60)} here, "
                    f"but {first}:{self.line(first, (key,))} sets {excerpt(self.doc[key], 60)}; "
                    f"set {key} in one file only"
                )
            else:
                self.settings.setdefault(key, label)
                self.doc[key] = value

    def where(self, merged: tuple[Any, ...]) -> tuple[str | None, tuple[Any, ...]]:
        """The file and the file's own path of a location in the merged document."""
        if not merged:
            return None, merged
        head = merged[0]
        index = merged[1] if len(merged) > 1 else None
        if head in self.items and isinstance(index, int) and index < len(self.items[head]):
            label, local = self.items[head][index]
            return label, (head, local, *merged[2:])
        if head in self.settings:
            return self.settings[head], merged
        return None, merged

    def locate(self, problem: str, default: str) -> str:
        """Prefix a ``path: message`` problem with the file and line it is about."""
        where, sep, message = problem.partition(": ")
        if not sep or not PATH.fullmatch(where):
            return f"{default}: {problem}"
        label, local = self.where(parse_path(where))
        if label is None:
            return f"{default}: {problem}"
        message = _SIBLING.sub(lambda m: self._sibling(m), message)
        line = self.line(label, local)
        at = f"{label}:{line}" if line is not None else label
        return f"{at}: {format_path(local)}: {message}"

    def _sibling(self, m: re.Match[str]) -> str:
        """``guardrails[3]`` in a message (the other half of a clash) → its file and line."""
        label, local = self.where((m[1], int(m[2])))
        if label is None:
            return m[0]
        return f"{format_path(local)} ({label}:{self.line(label, local)})"


def _read(path: Path, label: str, merge: _Merge) -> None:
    try:
        located = read_located(path, label)
    except YamlError as exc:
        merge.problems.extend(exc.problems)
        return
    merge.add(label, located)


def _validate(merge: _Merge, source: str, registry: GuardrailRegistry | None) -> Bundle:
    problems = list(merge.problems)
    policy: PlatformBundle | None = None
    try:
        policy = PlatformBundle.model_validate(merge.doc)
    except ValidationError as exc:
        problems += [merge.locate(p, source) for p in pydantic_problems(exc)]
    rules: list[Any] = list(policy.guardrails) if policy else _each_rule(merge.doc)
    problems += [
        merge.locate(p, source)
        for p in rule_problems(list(enumerate(rules)), registry, origin="platform")
    ]
    if problems or policy is None:
        raise BundleError(_ordered(problems, merge), source=source)
    origins = {}
    for i, rule in enumerate(policy.guardrails):
        label, local = merge.where(("guardrails", i))
        if label is not None:
            origins[rule.rule_id] = f"{label}:{merge.line(label, local)}"
    return Bundle(
        policy=policy,
        hash=policy_hash(policy),
        source=source,
        files=tuple(merge.files),
        origins=origins,
    )


def _each_rule(doc: dict[str, Any]) -> list[Any]:
    """Each rule validated on its own where it can be (so the floor is judged despite others)."""
    out: list[Any] = []
    for raw in doc.get("guardrails", []):
        try:
            out.append(GuardrailRule.model_validate(raw))
        except ValidationError:
            out.append(raw)
    return out


def _ordered(problems: list[str], merge: _Merge) -> list[str]:
    """Problems in file order, then line order."""
    order = {label: i for i, label in enumerate(merge.files)}

    def key(problem: str) -> tuple[int, int, str]:
        label, _, rest = problem.partition(":")
        line = rest.split(":", 1)[0]
        return (order.get(label, -1), int(line) if line.isdigit() else 0, problem)

    return sorted(problems, key=key)


def load_bundle(path: str | Path, *, registry: GuardrailRegistry | None = None) -> Bundle:
    """Load, merge and validate the bundle at ``path`` (a file or a directory of YAML files).

    Args:
        path: the bundle file or directory (``CHANGEGUARD_POLICY``).
        registry: when given, every rule is checked against it (unknown guardrails, params,
            floor relaxations without a reason).

    Raises:
        BundleError: with every problem, each located by file and line.

    """
    root = Path(path).expanduser()
    source = str(path)
    merge = _Merge()
    if not root.exists():
        raise BundleError([f"{source}: no such file or directory"], source=source)
    files = bundle_files(root)
    if not files:
        raise BundleError([f"{source}: the directory holds no *.yaml or *.yml file"], source=source)
    for file in files:
        _read(file, str(file) if root.is_dir() else source, merge)
    return _validate(merge, source, registry)


def bundle_from_mapping(
    raw: dict[str, Any], *, registry: GuardrailRegistry | None = None, source: str = "inline"
) -> Bundle:
    """A bundle given as a mapping (tests, embedded uses); validated as a file would be.

    Raises:
        BundleError: with every problem, located by path.

    """
    merge = _Merge()
    merge.add(source, Located(raw))
    return _validate(merge, source, registry)
