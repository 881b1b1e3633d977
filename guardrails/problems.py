"""The one "every problem, located" error that every file reader and validator raises.

People write policy bundles, request policies, operator directories and change files; each reader
reports every mistake at once, each located (``platform/10-prod.yaml:7: guardrails[1].use: …``), so
an author fixes a file in one pass. They all raise a :class:`ProblemsError`::

    Exception
    └── ProblemsError                     problems: list[str], source, headline
        ├── YamlError                     guardrails.yamlfile: the text is not usable YAML
        ├── PolicyError                   guardrails.policy: a policy is invalid or refused
        │   └── BundleError               guardrails.bundle: the platform bundle is invalid
        │       └── PolicyMissing         worker.main: no bundle configured at all
        ├── DirectoryError                activities.directory: the operator directory is unusable
        └── ChangeFileError               cli.changefile: a change file is unusable

Pure (the standard library only), so any module may import it, workflow code included.
"""

from __future__ import annotations

__all__ = ["ProblemsError", "count"]


def count(n: int) -> str:
    """``1 problem``, ``2 problems``."""
    return f"{n} problem" + ("s" if n != 1 else "")


class ProblemsError(Exception):
    """Something people wrote is unusable; ``problems`` lists every problem found, each located.

    The message is the headline, then one ``  - problem`` line per problem. A subclass names its
    kind of headline in :attr:`HEADLINE` (``{source}`` and ``{count}`` filled in), unless the
    caller gives one.

    Attributes:
        problems: one line per problem, each starting with where it is.
        source: what was read (a file, ``inline``, ``request``, a spec), or ``None``.
        headline: the first line of the message (``policy bundle x is invalid (2 problems)``).
    """

    HEADLINE = "{source} is unusable ({count})"

    def __init__(
        self, problems: list[str], *, source: str | None = None, headline: str | None = None
    ) -> None:
        self.problems = list(problems)
        self.source = source
        self.headline = headline or self.HEADLINE.format(
            source=source or "input", count=count(len(self.problems))
        )
        super().__init__(f"{self.headline}:\n" + "\n".join(f"  - {p}" for p in self.problems))

    def one_line(self) -> str:
        """The headline and every problem on one line (for a workflow's failure message)."""
        return f"{self.headline}: " + "; ".join(self.problems)
