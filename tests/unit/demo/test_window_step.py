"""Step 3's maintenance window opens soon and lasts long enough at any time of day."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from demo.steps.gate import WINDOW_LENGTH, maintenance_window
from guardrails.builtin.change_window.rules import parse_window


@pytest.mark.parametrize(
    "now",
    [
        datetime(2026, 12, 1, 10, 0, 5, tzinfo=UTC),  # a Tuesday morning
        datetime(2026, 12, 1, 23, 57, 16, tzinfo=UTC),  # the rehearsal that failed: 23:58-24:00
        datetime(2026, 12, 6, 23, 59, 55, tzinfo=UTC),  # Sunday night: opens Monday 00:01
    ],
)
def test_the_window_opens_within_a_minute_or_two_and_lasts_its_length(now: datetime) -> None:
    opening, text = maintenance_window(now)
    window = parse_window(text)
    spans = window.spans(ZoneInfo("UTC"), date(2026, 11, 30), date(2026, 12, 8))
    span = next(s for s in spans if s.start <= opening < s.end)
    assert timedelta(seconds=8) <= opening - now <= timedelta(seconds=68)
    assert span.start == opening
    assert span.end - opening == WINDOW_LENGTH  # not cut at midnight
