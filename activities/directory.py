"""The operator directory: who is in which approver group, read again on every load.

The directory maps operators to groups and, for verified identity, to the OpenSSH public keys and
OIDC identities that sign for them (docs/approvals.md). It is a YAML file (``yaml:PATH``) or a plug-in
(``plugin:NAME``, entry-point group ``changeguard.directories``), read again on every
``load_directory`` call, because membership changes while changes wait for approval.

Errors::

    ProblemsError (guardrails.problems)
    └── DirectoryError    a directory spec is malformed, a file is missing or invalid, or a
                          plug-in is unknown; ``problems`` lists every problem found
"""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from typing import Annotated, Any, Protocol

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
)
from pydantic import ValidationError as PydanticValidationError

from activities.ssh_keys import parse_public_key
from guardrails.plugins import PluginKind, PluginRegistry
from guardrails.problems import ProblemsError
from guardrails.yamlfile import YamlError, read_yaml
from workflows.identity_models import OidcIdentity, OperatorKeys
from workflows.models import Directory
from workflows.problems import problems as pydantic_problems

DEFAULT_DIRECTORY = "yaml:.changeguard/operators.yaml"
DIRECTORY_GROUP = "changeguard.directories"


class DirectoryError(ProblemsError):
    """A directory spec, file or plug-in is unusable; ``problems`` lists every problem found."""

    HEADLINE = "operator directory {source} is unusable ({count})"


class DirectorySource(Protocol):
    """Where the operator directory comes from; plug-ins implement this (and are built bare)."""

    name: str

    async def load(self) -> Directory:
        """Read the directory as it is now."""
        ...


_Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


def _no_groups(value: Any) -> Any:
    return [] if value is None else value  # "carol:" with nothing after it: no groups


class _Operator(BaseModel):
    """The long form of an entry: groups, OpenSSH public key lines, OIDC identities."""

    model_config = ConfigDict(extra="forbid")

    groups: Annotated[list[_Name], BeforeValidator(_no_groups)] = Field(default_factory=list)
    keys: Annotated[list[str], BeforeValidator(_no_groups)] = Field(default_factory=list)
    oidc: Annotated[list[OidcIdentity], BeforeValidator(_no_groups)] = Field(default_factory=list)


_LIST, _LONG = "groups-list", "operator-entry"
_Entry = Annotated[
    Annotated[Annotated[list[_Name], BeforeValidator(_no_groups)], Tag(_LIST)]
    | Annotated[_Operator, Tag(_LONG)],
    Discriminator(lambda v: _LONG if isinstance(v, dict | _Operator) else _LIST),
]
"""An entry: a list of groups, or the long form with keys (the tags stay out of messages)."""


class _DirectoryFile(BaseModel):
    """The YAML file: ``operators: {alice: [web-team], bob: {groups: [sre-leads], keys: [...]}}``."""

    model_config = ConfigDict(extra="forbid")

    operators: dict[_Name, _Entry] = Field(default_factory=dict)


class YamlDirectory:
    """The operator directory kept in a YAML file, read again on every :meth:`load`.

    Args:
        path: the file (relative paths are relative to the working directory).
        missing_ok: a missing file is an empty directory rather than an error.
    """

    name = "yaml"

    def __init__(self, path: str | Path, *, missing_ok: bool = False) -> None:
        self.path = Path(path)
        self.missing_ok = missing_ok

    async def load(self) -> Directory:
        """Read and validate the file (in a thread)."""
        return await asyncio.to_thread(self.read)

    def read(self) -> Directory:
        """Read and validate the file.

        Raises:
            DirectoryError: the file is missing (unless ``missing_ok``), unreadable or invalid;
                each problem is located (``operators.bob.1: ...``) and the message names the file.
        """
        label = str(self.path)
        source = f"yaml:{label}"
        if self.missing_ok and not self.path.exists():
            return Directory(source=source)
        try:
            raw = read_yaml(self.path, label)
        except YamlError as exc:
            raise DirectoryError(exc.problems, source=label) from None
        if raw is not None and not isinstance(raw, dict):
            raise DirectoryError(
                [
                    f"{label}: expected a mapping such as 'operators: {{alice: [web-team]}}', "
                    f"not a {type(raw).__name__}"
                ],
                source=label,
            )
        try:
            parsed = _DirectoryFile.model_validate(raw or {})
        except PydanticValidationError as exc:
            raise DirectoryError(pydantic_problems(exc, where=_where), source=label) from None
        operators: dict[str, list[str]] = {}
        identities: dict[str, OperatorKeys] = {}
        problems: list[str] = []
        for name, entry in parsed.operators.items():
            if isinstance(entry, list):
                operators[name] = list(dict.fromkeys(entry))
                continue
            operators[name] = list(dict.fromkeys(entry.groups))
            lines = []
            for i, line in enumerate(entry.keys):
                try:
                    lines.append(parse_public_key(line).line)
                except ValueError as exc:
                    problems.append(f"operators.{name}.keys[{i}]: {exc}")
            if lines or entry.oidc:
                identities[name] = OperatorKeys(keys=lines, oidc=entry.oidc)
        if problems:
            raise DirectoryError(problems, source=label)
        return Directory(operators=operators, source=source, identities=identities)


def _where(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as written in YAML: ``operators.bob[1]``, ``operators.'' (name)``."""
    parts: list[str] = []
    for part in loc:
        if part in (_LIST, _LONG):
            continue  # the tag of the entry's form, not a key the author wrote
        if part == "[key]" and parts:
            parts[-1] += " (name)"
        elif isinstance(part, int) and parts:
            parts[-1] += f"[{part}]"
        else:
            text = str(part)
            parts.append(text if text.strip() and text.isprintable() else repr(text))
    return ".".join(parts)


def _validate_directory(cls: type[DirectorySource]) -> list[str]:
    if not isinstance(cls, type):
        return ["it must be a class"]
    if not inspect.iscoroutinefunction(getattr(cls, "load", None)):
        return ["it must define 'async def load(self) -> Directory'"]
    return []


DIRECTORIES: PluginKind[DirectorySource] = PluginKind(
    kind="operator directory", group=DIRECTORY_GROUP, validate=_validate_directory
)
"""The directory plug-in kind: its entry-point group and contract (structural: no base class)."""


def new_directory_registry() -> PluginRegistry[DirectorySource]:
    """An empty registry of directory plug-ins (tests use their own)."""
    return DIRECTORIES.new_registry()


def default_directory_registry() -> PluginRegistry[DirectorySource]:
    """A registry with every directory plug-in advertised through entry points."""
    return DIRECTORIES.default_registry()


def open_directory(
    spec: str = DEFAULT_DIRECTORY, *, registry: PluginRegistry[DirectorySource] | None = None
) -> DirectorySource:
    """The directory a spec names: ``yaml:PATH`` or ``plugin:NAME``.

    Only the default file (:data:`DEFAULT_DIRECTORY`) may be missing (an empty directory: nobody
    may approve); a file named explicitly must exist.

    Args:
        spec: the directory spec.
        registry: where ``plugin:NAME`` is looked up (default: the entry points).

    Raises:
        DirectoryError: the spec has another form, or no plug-in has that name.
    """
    kind, _, rest = spec.partition(":")
    if kind == "yaml" and rest:
        return YamlDirectory(rest, missing_ok=spec == DEFAULT_DIRECTORY)
    if kind == "plugin" and rest:
        plugins = registry if registry is not None else default_directory_registry()
        try:
            return plugins.get(rest)
        except KeyError as exc:
            raise DirectoryError([str(exc.args[0])], source=spec) from None
    raise DirectoryError(
        [
            f"{spec!r} is not a directory spec; use 'yaml:PATH' (e.g. {DEFAULT_DIRECTORY!r}) or "
            f"'plugin:NAME' (a plug-in registered under the entry-point group {DIRECTORY_GROUP!r})"
        ],
        source=spec,
    )
