"""What the built-in guardrails share: http(s) URL and positive-duration params, body excerpts."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import httpx
from pydantic_core import PydanticCustomError


def http_url(example: str) -> Callable[[str], str]:
    """A validator for an http(s) URL, kept as written; its error message shows ``example``.

    Use as ``Annotated[str, AfterValidator(http_url("http://host:9090"))]``.
    """

    def check(value: str) -> str:
        try:
            url = httpx.URL(value)
        except (httpx.InvalidURL, TypeError, ValueError):
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            raise PydanticCustomError(
                "url",
                "{message}",
                {"message": f"{value!r} is not an http(s) URL; write e.g. '{example}'"},
            )
        return value

    return check


def positive(value: timedelta) -> timedelta:
    """Refuse zero and negative durations (a pydantic ``AfterValidator``).

    Raises:
        PydanticCustomError: the duration is not positive.
    """
    if value <= timedelta(0):
        raise PydanticCustomError("duration", "the duration must be positive, e.g. '10s'")
    return value


BODY_EXCERPT = 200
"""How many characters of an unexpected answer's body a reason or remedy quotes."""


def excerpt(text: str) -> str:
    """A body on one line, cut to :data:`BODY_EXCERPT` characters (``…`` when cut)."""
    flat = " ".join(text.split())
    return flat[:BODY_EXCERPT] + ("…" if len(flat) > BODY_EXCERPT else "")
