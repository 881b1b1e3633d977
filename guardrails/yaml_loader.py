"""The strict YAML loader under :mod:`guardrails.yamlfile`: JSON's data model, bounded.

libyaml (in C) parses; the constructor here refuses what ``yaml.safe_load`` lets through: duplicate
and non-string keys, integers beyond 64 bits, infinities and NaN, and the tags ``!!binary``,
``!!set``, ``!!omap`` and ``!!pairs``. Each refusal is a :class:`YamlIssue` with its line and
column. Two walks bound the document before it is built: :func:`check_events` over the parser's
events (depth, alias count, recursion) and :func:`expanded` over the composed nodes (how many
values and how deep once aliases are expanded), so an alias bomb is refused before it expands.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = ["Fatal", "Loader", "YamlIssue", "at", "check_events", "expanded", "printable"]

_INT_LIMIT = 2**63
_INT_DIGITS = 30  # longer integer literals are refused before Python converts them
_MERGE = "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class YamlIssue:
    """One problem, with its 1-based line and column when it has a place in the text."""

    message: str
    line: int | None = None
    column: int | None = None

    def located(self, label: str) -> str:
        """``label:line:column: message`` (or ``label: message`` for a whole-file problem)."""
        if self.line is None:
            return f"{label}: {self.message}"
        return f"{label}:{self.line}:{self.column}: {self.message}"


def printable(text: str, limit: int = 80) -> str:
    """``text`` safe to show: control characters as ``?``, cut at ``limit`` characters."""
    shown = "".join(c if c.isprintable() else "?" for c in text[: limit * 2])
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


class Fatal(Exception):
    """Stops reading at once (the loader cannot go on sensibly)."""

    def __init__(self, issue: YamlIssue) -> None:
        self.issue = issue


def at(mark: Any) -> tuple[int | None, int | None]:
    """A libyaml mark as a 1-based (line, column), or ``(None, None)``."""
    if mark is None:
        return None, None
    return mark.line + 1, mark.column + 1


class Loader(yaml.CSafeLoader):
    """libyaml's parser with a constructor that refuses duplicates and non-JSON values."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.issues: list[YamlIssue] = []
        self.last_mark: Any = None

    # ---------------------------------------------------------------------------- constructing

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        """Build any value, remembering where (an unanticipated failure is still located)."""
        self.last_mark = node.start_mark
        return super().construct_object(node, deep=deep)

    def construct_mapping(self, node: Node, deep: bool = False) -> dict[Any, Any]:
        """A mapping with string keys only, each once (both lines named for a duplicate)."""
        if isinstance(node, MappingNode):
            first: dict[str, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE:
                    continue
                line, column = at(key_node.start_mark)
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    written = key_node.value if isinstance(key_node, ScalarNode) else "…"
                    self.issues.append(
                        YamlIssue(
                            f"key {printable(str(written))!r} is not a string "
                            f"(YAML reads it as {type(key).__name__}); quote it",
                            line,
                            column,
                        )
                    )
                    continue
                if key in first:
                    self.issues.append(
                        YamlIssue(
                            f"duplicate key {printable(key)!r} (first at line {first[key]})",
                            line,
                            column,
                        )
                    )
                else:
                    first[key] = line or 0
        mapping = super().construct_mapping(node, deep=deep)  # type: ignore[arg-type]
        return {k: v for k, v in mapping.items() if isinstance(k, str)}

    def construct_yaml_int(self, node: ScalarNode) -> int:
        """An integer within 64 bits (long literals refused before conversion)."""
        text = str(node.value)
        line, column = at(node.start_mark)
        if len(text.replace("_", "")) > _INT_DIGITS:
            self.issues.append(YamlIssue(f"integer {printable(text)} is too large", line, column))
            return 0
        value = int(super().construct_yaml_int(node))
        if not -_INT_LIMIT <= value < _INT_LIMIT:
            self.issues.append(
                YamlIssue(f"integer {printable(text)} does not fit in 64 bits", line, column)
            )
            return 0
        return value

    def construct_yaml_float(self, node: ScalarNode) -> float:
        """A finite float (infinity and NaN refused)."""
        value = float(super().construct_yaml_float(node))
        if not math.isfinite(value):
            line, column = at(node.start_mark)
            self.issues.append(
                YamlIssue(
                    f"{printable(str(node.value))} is not a finite number "
                    "(infinity and NaN are refused)",
                    line,
                    column,
                )
            )
            return 0.0
        return value

    def construct_plain_timestamp(self, node: ScalarNode) -> str:
        """A timestamp stays the string written, as it would arrive in JSON."""
        return str(self.construct_scalar(node))

    def construct_refused(self, node: Node) -> None:
        """A tag outside JSON's data model: refused, located."""
        line, column = at(node.start_mark)
        self.issues.append(
            YamlIssue(
                f"tag {printable(str(node.tag).replace('tag:yaml.org,2002:', '!!'))} is not "
                "supported: use mappings, lists, strings, numbers, booleans and null",
                line,
                column,
            )
        )


def check_events(text: str, *, max_aliases: int, max_depth: int) -> int:
    """Walk the parser's events (in C, fast): depth, aliases and recursion, before composing.

    Returns:
        How many aliases the text uses.

    Raises:
        Fatal: the first bound the text breaks.
        yaml.YAMLError: the text is not YAML.
    """
    aliases = 0
    depth = 0
    open_anchors: list[str | None] = []
    for event in yaml.parse(text, Loader=yaml.CSafeLoader):
        if isinstance(event, yaml.AliasEvent):
            aliases += 1
            line, column = at(event.start_mark)
            name = printable(str(event.anchor))
            if max_aliases == 0:
                raise Fatal(
                    YamlIssue(
                        f"alias *{name} is not allowed here; write the value out", line, column
                    )
                )
            if aliases > max_aliases:
                raise Fatal(YamlIssue(f"more than {max_aliases} aliases (*name)", line, column))
            if event.anchor in open_anchors:
                raise Fatal(
                    YamlIssue(
                        f"alias *{name} refers to a value that contains it (a recursive structure)",
                        line,
                        column,
                    )
                )
        elif isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > max_depth:
                line, column = at(event.start_mark)
                raise Fatal(YamlIssue(f"nested deeper than {max_depth} levels", line, column))
            open_anchors.append(event.anchor)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
            open_anchors.pop()
    return aliases


Loader.add_constructor("tag:yaml.org,2002:int", Loader.construct_yaml_int)
Loader.add_constructor("tag:yaml.org,2002:float", Loader.construct_yaml_float)
Loader.add_constructor("tag:yaml.org,2002:timestamp", Loader.construct_plain_timestamp)
for _tag in ("binary", "set", "omap", "pairs"):
    Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", Loader.construct_refused)


def expanded(root: Node, *, max_values: int, max_depth: int) -> YamlIssue | None:
    """Whether the document, with every alias expanded, stays within the bounds."""
    sizes: dict[int, tuple[int, int]] = {}

    def walk(node: Node) -> tuple[int, int]:
        known = sizes.get(id(node))
        if known is not None:
            return known
        count, depth = 1, 1
        children: list[Node] = []
        if isinstance(node, SequenceNode):
            children = list(node.value)
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        for child in children:
            c, d = walk(child)
            count += c
            depth = max(depth, d + 1)
            if count > max_values:
                break
        sizes[id(node)] = (count, depth)
        return count, depth

    count, depth = walk(root)
    line, column = at(root.start_mark)
    if count > max_values:
        return YamlIssue(
            f"expands to more than {max_values:,} values once aliases are expanded "
            "(an alias bomb?)",
            line,
            column,
        )
    if depth > max_depth:
        return YamlIssue(
            f"nested deeper than {max_depth} levels once aliases are expanded", line, column
        )
    return None
