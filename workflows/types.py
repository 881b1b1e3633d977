"""Leaf types shared by every wire model: human durations and the strict base model."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer

# --------------------------------------------------------------------------------------------------
# Durations: "90s", "30m", "4h", "1h30m", "2d", or a number of seconds.
# --------------------------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> timedelta:
    """Parse a human duration (``"4h"``, ``"1h30m"``, ``"90s"``) or a number of seconds.

    Raises:
        ValueError: the value is not a duration; the message shows the accepted forms.
    """
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '30s', '10m', '4h' or '1h30m'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return timedelta(seconds=value)
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if text.startswith("p"):  # ISO 8601, as pydantic serialises timedelta
            from pydantic import TypeAdapter

            return TypeAdapter(timedelta).validate_python(value)
        parts = _DURATION_PART.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return timedelta(seconds=sum(float(n) * _UNIT_SECONDS[u] for n, u in parts))
    raise ValueError(
        f"{value!r} is not a duration; use forms such as '30s', '10m', '4h' or '1h30m'"
    )


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
