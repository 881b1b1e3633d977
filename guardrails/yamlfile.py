"""The one located YAML reader: JSON-like data out, or every problem with its line and column.

Change files, policy bundles and operator directories are written by people and sometimes by
hostile tools. ``yaml.safe_load`` accepts too much for that: a duplicate key silently replaces the
first one, an alias bomb (``&a [*a, *a]`` nested ten times) expands to billions of values, deep
nesting overflows the stack, a binary or non-UTF-8 file fails with a traceback, and tags such as
``!!binary`` or ``!!set`` produce values no JSON payload can carry. :func:`read_yaml` refuses all
of those with one error type, :class:`YamlError`, whose ``problems`` each say where and what::

    change.yaml:9:1: duplicate key 'policy' (first at line 2)

What it returns is JSON's data model only: mappings with string keys, lists, strings, integers
within 64 bits, finite floats, booleans and null. Unquoted timestamps stay the strings written
(``2026-12-01T18:00:00Z``), as they would arrive in a JSON payload; pydantic parses them where a
model wants a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from guardrails.problems import ProblemsError, count

__all__ = [
    "MAX_ALIASES",
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_VALUES",
    "YamlError",
    "YamlIssue",
    "read_yaml",
]

MAX_BYTES = 2_000_000
"""A file larger than this is refused: Temporal refuses payloads over 2 MB anyway."""
MAX_DEPTH = 50
"""Deeper nesting (counting what aliases expand to) is refused: no real file needs it."""
MAX_ALIASES = 50
"""At most this many aliases (``*name``) per file, unless the caller says otherwise."""
MAX_VALUES = 200_000
"""At most this many values once aliases are expanded (an alias bomb expands to billions)."""
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


class YamlError(ProblemsError):
    """A YAML text is unusable; ``problems`` lists every problem found, each located.

    Attributes:
        label: what was read (a file name, or whatever the caller named the text).
        issues: the problems as :class:`YamlIssue` values.
        problems: the problems as ``label:line:column: message`` lines.
    """

    def __init__(self, label: str, issues: list[YamlIssue]) -> None:
        self.label = label
        self.issues = list(issues)
        super().__init__(
            [i.located(label) for i in self.issues],
            source=label,
            headline=f"{label} is unusable ({count(len(self.issues))})",
        )


def _printable(text: str, limit: int = 80) -> str:
    shown = "".join(c if c.isprintable() else "?" for c in text[: limit * 2])
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


class _Fatal(Exception):
    """Stops reading at once (the loader cannot go on sensibly)."""

    def __init__(self, issue: YamlIssue) -> None:
        self.issue = issue


def _at(mark: Any) -> tuple[int | None, int | None]:
    if mark is None:
        return None, None
    return mark.line + 1, mark.column + 1


class _Loader(yaml.CSafeLoader):
    """libyaml's parser with a constructor that refuses duplicates and non-JSON values."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.issues: list[YamlIssue] = []
        self.last_mark: Any = None

    # ---------------------------------------------------------------------------- constructing

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        self.last_mark = node.start_mark
        return super().construct_object(node, deep=deep)

    def construct_mapping(self, node: Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            first: dict[str, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE:
                    continue
                line, column = _at(key_node.start_mark)
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    written = key_node.value if isinstance(key_node, ScalarNode) else "…"
                    self.issues.append(
                        YamlIssue(
                            f"key {_printable(str(written))!r} is not a string "
                            f"(YAML reads it as {type(key).__name__}); quote it",
                            line,
                            column,
                        )
                    )
                    continue
                if key in first:
                    self.issues.append(
                        YamlIssue(
                            f"duplicate key {_printable(key)!r} (first at line {first[key]})",
                            line,
                            column,
                        )
                    )
                else:
                    first[key] = line or 0
        mapping = super().construct_mapping(node, deep=deep)  # type: ignore[arg-type]
        return {k: v for k, v in mapping.items() if isinstance(k, str)}

    def construct_yaml_int(self, node: ScalarNode) -> int:
        text = str(node.value)
        line, column = _at(node.start_mark)
        if len(text.replace("_", "")) > _INT_DIGITS:
            self.issues.append(YamlIssue(f"integer {_printable(text)} is too large", line, column))
            return 0
        value = int(super().construct_yaml_int(node))
        if not -_INT_LIMIT <= value < _INT_LIMIT:
            self.issues.append(
                YamlIssue(f"integer {_printable(text)} does not fit in 64 bits", line, column)
            )
            return 0
        return value

    def construct_yaml_float(self, node: ScalarNode) -> float:
        value = float(super().construct_yaml_float(node))
        if not math.isfinite(value):
            line, column = _at(node.start_mark)
            self.issues.append(
                YamlIssue(
                    f"{_printable(str(node.value))} is not a finite number "
                    "(infinity and NaN are refused)",
                    line,
                    column,
                )
            )
            return 0.0
        return value

    def construct_plain_timestamp(self, node: ScalarNode) -> str:
        return str(self.construct_scalar(node))

    def construct_refused(self, node: Node) -> None:
        line, column = _at(node.start_mark)
        self.issues.append(
            YamlIssue(
                f"tag {_printable(str(node.tag).replace('tag:yaml.org,2002:', '!!'))} is not "
                "supported: use mappings, lists, strings, numbers, booleans and null",
                line,
                column,
            )
        )


def _check_events(text: str, *, max_aliases: int, max_depth: int) -> int:
    """Walk the parser's events (in C, fast): depth, aliases and recursion, before composing.

    Returns:
        How many aliases the text uses.

    Raises:
        _Fatal: the first bound the text breaks.
        yaml.YAMLError: the text is not YAML.
    """
    aliases = 0
    depth = 0
    open_anchors: list[str | None] = []
    for event in yaml.parse(text, Loader=yaml.CSafeLoader):
        if isinstance(event, yaml.AliasEvent):
            aliases += 1
            line, column = _at(event.start_mark)
            name = _printable(str(event.anchor))
            if max_aliases == 0:
                raise _Fatal(
                    YamlIssue(
                        f"alias *{name} is not allowed here; write the value out", line, column
                    )
                )
            if aliases > max_aliases:
                raise _Fatal(YamlIssue(f"more than {max_aliases} aliases (*name)", line, column))
            if event.anchor in open_anchors:
                raise _Fatal(
                    YamlIssue(
                        f"alias *{name} refers to a value that contains it (a recursive structure)",
                        line,
                        column,
                    )
                )
        elif isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > max_depth:
                line, column = _at(event.start_mark)
                raise _Fatal(YamlIssue(f"nested deeper than {max_depth} levels", line, column))
            open_anchors.append(event.anchor)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
            open_anchors.pop()
    return aliases


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _Loader.construct_yaml_float)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _Loader.construct_plain_timestamp)
for _tag in ("binary", "set", "omap", "pairs"):
    _Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", _Loader.construct_refused)


def _expanded(root: Node, *, max_values: int, max_depth: int) -> YamlIssue | None:
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
    line, column = _at(root.start_mark)
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


def _decode(data: bytes, label: str) -> str:
    if b"\x00" in data:
        at = data.index(b"\x00")
        raise YamlError(
            label, [YamlIssue(f"is a binary file (a NUL byte at offset {at}), not YAML text")]
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise YamlError(
            label,
            [
                YamlIssue(
                    f"is not UTF-8 text (byte 0x{data[exc.start]:02x} cannot start or continue "
                    "a character); save it as UTF-8",
                    line,
                    column,
                )
            ],
        ) from None


def _read_file(path: Path, label: str, max_bytes: int) -> str:
    try:
        if path.is_dir():
            raise YamlError(label, [YamlIssue("is a directory, not a file")])
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise YamlError(label, [YamlIssue("no such file")]) from None
    except OSError as exc:
        raise YamlError(label, [YamlIssue(f"cannot read: {exc.strerror or exc}")]) from None
    except ValueError as exc:  # a path with a NUL character in it
        raise YamlError(label, [YamlIssue(f"cannot read: {exc}")]) from None
    if len(data) > max_bytes:
        raise YamlError(
            label, [YamlIssue(f"is larger than {max_bytes:,} bytes; a file this large is refused")]
        )
    return _decode(data, label)


def _yaml_issue(exc: yaml.YAMLError, text: str) -> YamlIssue:
    if isinstance(exc, yaml.reader.ReaderError):
        before = text[: exc.position]
        row = before.count("\n") + 1
        col = exc.position - (before.rfind("\n") + 1) + 1
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        return YamlIssue(
            f"character U+{ord(char):04X} is not allowed in YAML text (control characters are "
            "refused)",
            row,
            col,
        )
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    message = f"invalid YAML: {problem}" + (f" ({context})" if context else "")
    line, column = _at(mark)
    return YamlIssue(_printable(message, 300), line, column)


def read_yaml(
    source: Path | str | bytes,
    label: str | None = None,
    *,
    max_bytes: int = MAX_BYTES,
    max_depth: int = MAX_DEPTH,
    max_aliases: int = MAX_ALIASES,
    max_values: int = MAX_VALUES,
) -> Any:
    """Read one YAML document (JSON is YAML too) into JSON-like data, or say every problem.

    Args:
        source: a file (:class:`~pathlib.Path`), or the text itself (``str`` or ``bytes``).
        label: how problems name the source (default: the path, else ``"<text>"``).
        max_bytes: a larger file or text is refused.
        max_depth: deeper nesting is refused (aliases expanded).
        max_aliases: more aliases are refused; ``0`` refuses any alias.
        max_values: a document that expands to more values (aliases expanded) is refused.

    Returns:
        The document (``None`` for an empty one): dicts with string keys, lists, str, int, float,
        bool and None only.

    Raises:
        YamlError: the source is missing, unreadable, binary, not UTF-8, too large, not YAML, or
            holds duplicate or non-string keys, unsupported tags, non-finite numbers, integers
            beyond 64 bits, too many aliases, recursion or too much depth; every problem located.
    """
    if isinstance(source, Path):
        name = label or str(source)
        text = _read_file(source, name, max_bytes)
    else:
        name = label or "<text>"
        raw = source if isinstance(source, bytes) else source.encode("utf-8", "surrogatepass")
        if len(raw) > max_bytes:
            raise YamlError(
                name,
                [YamlIssue(f"is larger than {max_bytes:,} bytes; a text this large is refused")],
            )
        text = _decode(raw, name) if isinstance(source, bytes) else source
    loader: _Loader | None = None
    try:
        aliases = _check_events(text, max_aliases=max_aliases, max_depth=max_depth)
        loader = _Loader(text)
        root = loader.get_single_node()
        if root is None:
            return None
        issue = _expanded(root, max_values=max_values, max_depth=max_depth) if aliases else None
        if issue is not None:
            raise YamlError(name, [issue])
        data = loader.construct_document(root)
    except _Fatal as exc:
        raise YamlError(name, [exc.issue]) from None
    except yaml.YAMLError as exc:
        earlier = loader.issues if loader is not None else []
        raise YamlError(name, [*earlier, _yaml_issue(exc, text)]) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # A value nothing above anticipated (text that is not valid Unicode, say): still located.
        line, column = _at(loader.last_mark if loader is not None else None)
        raise YamlError(
            name,
            [
                *(loader.issues if loader is not None else []),
                YamlIssue(f"unreadable value: {_printable(str(exc), 200)}", line, column),
            ],
        ) from None
    finally:
        if loader is not None:
            loader.dispose()
    if loader.issues:
        raise YamlError(name, sorted(loader.issues, key=lambda i: (i.line or 0, i.column or 0)))
    return data
