"""The one located YAML reader: JSON-like data out, or every problem with its line and column.

Change files, policy bundles and operator directories are written by people and sometimes by
hostile tools. ``yaml.safe_load`` accepts too much for that: a duplicate key silently replaces the
first one, an alias bomb (``&a [*a, *a]`` nested ten times) expands to billions of values, deep
nesting overflows the stack, a binary or non-UTF-8 file fails with a traceback, and tags such as
``!!binary`` or ``!!set`` produce values no JSON payload can carry. :func:`read_yaml` refuses all
of those with one error type, :class:`YamlError`, whose ``problems`` each say where and what::

    change.yaml:9:1: duplicate key 'policy' (first at line 2)

:func:`read_located` also returns the line of every key and list item, so a problem found later
(by a pydantic model, say) can be located too: ``guardrails[1].use`` → line 7. Policy files, the
platform bundle, operator directories and change files are all read here; the strict constructor
and its bounds are in :mod:`guardrails.yaml_loader`.

What it returns is JSON's data model only: mappings with string keys, lists, strings, integers
within 64 bits, finite floats, booleans and null. Unquoted timestamps stay the strings written
(``2026-12-01T18:00:00Z``), as they would arrive in a JSON payload; pydantic parses them where a
model wants a time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, Unpack

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from guardrails.problems import ProblemsError
from guardrails.yaml_loader import Fatal, Loader, YamlIssue, at, check_events, expanded, printable

__all__ = [
    "MAX_ALIASES",
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_VALUES",
    "PATH",
    "Key",
    "Limits",
    "Located",
    "YamlError",
    "YamlIssue",
    "format_path",
    "parse_path",
    "read_located",
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
        super().__init__([i.located(label) for i in self.issues], source=label)


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
    line, column = at(mark)
    return YamlIssue(printable(message, 300), line, column)


Key = str | int
"""One step of a path into a document: a mapping key or a list index."""

PATH = re.compile(r"[A-Za-z_][\w-]*(?:\[\d+\]|\.[\w-]+)*")
"""A dotted path as problems write it: ``guardrails[1].params.timezone``."""
_TOKEN = re.compile(r"\[(\d+)\]|\.?([^.\[\]]+)")


def parse_path(where: str) -> tuple[Key, ...]:
    """``guardrails[1].params`` → ``("guardrails", 1, "params")``."""
    return tuple(int(m[1]) if m[1] is not None else m[2] for m in _TOKEN.finditer(where))


def format_path(path: Sequence[Key]) -> str:
    """``("guardrails", 1, "params")`` → ``guardrails[1].params``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass(frozen=True)
class Located:
    """A YAML document and the 1-based line of every key and list item in it.

    Attributes:
        data: the document, as :func:`read_yaml` returns it.
        lines: each path (``("guardrails", 1, "use")``) → the line its key or item starts on.
    """

    data: Any
    lines: Mapping[tuple[Key, ...], int] = field(default_factory=dict)

    def line(self, path: Sequence[Key]) -> int | None:
        """The line of ``path``, or of its nearest ancestor written in the file."""
        key = tuple(path)
        for n in range(len(key), 0, -1):
            if key[:n] in self.lines:
                return self.lines[key[:n]]
        return None


def _lines(node: Node, path: tuple[Key, ...], out: dict[tuple[Key, ...], int]) -> None:
    """Record the line of every key and item under ``node`` (aliases expanded, bounded above)."""
    if isinstance(node, MappingNode):
        for key, value in node.value:
            if isinstance(key, ScalarNode):
                here = (*path, str(key.value))
                out[here] = key.start_mark.line + 1
                _lines(value, here, out)
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            out[(*path, i)] = item.start_mark.line + 1
            _lines(item, (*path, i), out)


class Limits(TypedDict, total=False):
    """The bounds a caller may tighten or loosen (each defaults to its ``MAX_*`` constant)."""

    max_bytes: int
    """A larger file or text is refused."""
    max_depth: int
    """Deeper nesting is refused (aliases expanded)."""
    max_aliases: int
    """More aliases are refused; ``0`` refuses any alias."""
    max_values: int
    """A document that expands to more values (aliases expanded) is refused."""


def read_yaml(
    source: Path | str | bytes, label: str | None = None, **limits: Unpack[Limits]
) -> Any:
    """Read one YAML document (JSON is YAML too) into JSON-like data, or say every problem.

    Args:
        source: a file (:class:`~pathlib.Path`), or the text itself (``str`` or ``bytes``).
        label: how problems name the source (default: the path, else ``"<text>"``).
        **limits: ``max_bytes``, ``max_depth``, ``max_aliases`` (``0`` refuses any alias) and
            ``max_values`` (see :class:`Limits`).

    Returns:
        The document (``None`` for an empty one): dicts with string keys, lists, str, int, float,
        bool and None only.

    Raises:
        YamlError: the source is missing, unreadable, binary, not UTF-8, too large, not YAML, or
            holds duplicate or non-string keys, unsupported tags, non-finite numbers, integers
            beyond 64 bits, too many aliases, recursion or too much depth; every problem located.
    """
    return _load(source, label, limits, lines=False).data


def read_located(
    source: Path | str | bytes, label: str | None = None, **limits: Unpack[Limits]
) -> Located:
    """:func:`read_yaml`, plus the line of every key and item (to locate later problems).

    Raises:
        YamlError: as :func:`read_yaml`.
    """
    return _load(source, label, limits, lines=True)


def _text(source: Path | str | bytes, name: str, max_bytes: int) -> str:
    if isinstance(source, Path):
        return _read_file(source, name, max_bytes)
    raw = source if isinstance(source, bytes) else source.encode("utf-8", "surrogatepass")
    if len(raw) > max_bytes:
        raise YamlError(
            name, [YamlIssue(f"is larger than {max_bytes:,} bytes; a text this large is refused")]
        )
    return _decode(raw, name) if isinstance(source, bytes) else source


def _load(source: Path | str | bytes, label: str | None, limits: Limits, *, lines: bool) -> Located:
    max_bytes = limits.get("max_bytes", MAX_BYTES)
    max_depth = limits.get("max_depth", MAX_DEPTH)
    max_aliases = limits.get("max_aliases", MAX_ALIASES)
    max_values = limits.get("max_values", MAX_VALUES)
    name = label or (str(source) if isinstance(source, Path) else "<text>")
    text = _text(source, name, max_bytes)
    loader: Loader | None = None
    where: dict[tuple[Key, ...], int] = {}
    try:
        aliases = check_events(text, max_aliases=max_aliases, max_depth=max_depth)
        loader = Loader(text)
        root = loader.get_single_node()
        if root is None:
            return Located(None)
        issue = expanded(root, max_values=max_values, max_depth=max_depth) if aliases else None
        if issue is not None:
            raise YamlError(name, [issue])
        data = loader.construct_document(root)
        if lines:
            _lines(root, (), where)
    except Fatal as exc:
        raise YamlError(name, [exc.issue]) from None
    except yaml.YAMLError as exc:
        earlier = loader.issues if loader is not None else []
        raise YamlError(name, [*earlier, _yaml_issue(exc, text)]) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # A value nothing above anticipated (text that is not valid Unicode, say): still located.
        line, column = at(loader.last_mark if loader is not None else None)
        raise YamlError(
            name,
            [
                *(loader.issues if loader is not None else []),
                YamlIssue(f"unreadable value: {printable(str(exc), 200)}", line, column),
            ],
        ) from None
    finally:
        if loader is not None:
            loader.dispose()
    if loader.issues:
        raise YamlError(name, sorted(loader.issues, key=lambda i: (i.line or 0, i.column or 0)))
    return Located(data, where)
