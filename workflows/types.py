"""Leaf types shared by every wire model: human durations and the strict base model."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, PlainSerializer

# --------------------------------------------------------------------------------------------------
# Durations: "90s", "30m", "4h", "1h30m", "2d", or a number of seconds.
# --------------------------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_DURATION = timedelta(days=3650)
"""No duration changeguard accepts is longer (fields set tighter bounds of their own)."""


def _bounded(seconds: float) -> timedelta:
    if not math.isfinite(seconds) or seconds > MAX_DURATION.total_seconds():
        raise ValueError("a duration must be finite and at most 3650d (ten years)")
    return timedelta(seconds=seconds)


def parse_duration(value: Any) -> timedelta:
    """Parse a human duration (``"4h"``, ``"1h30m"``, ``"90s"``) or a number of seconds.

    Raises:
        ValueError: the value is not a duration; the message shows the accepted forms.
    """
    if isinstance(value, timedelta):
        if abs(value) > MAX_DURATION:
            raise ValueError("a duration must be at most 3650d (ten years)")
        return value
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '30s', '10m', '4h' or '1h30m'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return _bounded(float(value))
    if isinstance(value, str) and len(value) <= 64:
        text = value.strip().lower().replace(" ", "")
        if text.startswith("p"):  # ISO 8601, as pydantic serialises timedelta
            from pydantic import TypeAdapter, ValidationError

            try:
                parsed = TypeAdapter(timedelta).validate_python(value)
            except (ValidationError, OverflowError):
                raise ValueError(f"{value!r} is not an ISO 8601 duration") from None
            return parse_duration(parsed)
        parts = _DURATION_PART.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return _bounded(sum(float(n) * _UNIT_SECONDS[u] for n, u in parts))
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    raise ValueError(f"{shown} is not a duration; use forms such as '30s', '10m', '4h' or '1h30m'")


def format_duration(value: timedelta) -> str:
    """Render a duration the way a person writes it (``1h30m``, ``45s``)."""
    seconds = int(value.total_seconds())
    if seconds == 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(out)


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]


class Strict(BaseModel):
    """Base for models people write by hand: unknown fields are errors, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------------------------------
# Bounded text: every string a client sends is bounded, so that nothing it sends can push a search
# attribute, the status, a report or the audit store past what they accept (docs/design.md, I10).
# --------------------------------------------------------------------------------------------------

NAME_MAX = 128
TEXT_MAX = 2000


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
"""C0 control characters and DEL; searched by the regex engine, so a megabyte costs a millisecond."""


def _no_control(value: str) -> str:
    # A per-character Python scan took 0.2 s per megabyte: 25 one-megabyte signals in one workflow
    # activation tripped the SDK's 2 s deadlock detector (tests/integration/test_hostile_input.py).
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters (NUL, newline, tab …)")
    return value


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


Name = Annotated[
    str,
    BeforeValidator(lambda v: v.strip() if isinstance(v, str) else v),
    AfterValidator(_no_control),
]
"""A person, team, environment or kind name; length bounds are set per field (1-128)."""

Text = Annotated[str, AfterValidator(_no_nul)]
"""Free text (reasons, summaries); length bounds are set per field."""


def excerpt(value: object, limit: int = 200) -> str:
    """A bounded, printable rendering of any value, for refusals that quote what was sent."""
    text = value if isinstance(value, str) else repr(value)
    text = "".join(c if c.isprintable() else "?" for c in text[: limit * 4])
    return text if len(text) <= limit else text[: limit - 1] + "…"
