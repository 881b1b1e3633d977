"""``change-window``: changes start only inside allowed windows and outside freezes.

Windows are wall-clock times in a time zone (the rule's, or each window's own), so
"Mon-Thu 09:00-16:00" means 09:00 in Berlin in winter and summer; they may cross midnight and the
week. Allowed windows and freezes also come from iCalendar files and URLs, and freezes from public
holidays. When the rule is closed the check answers ``wait`` with the next opening as
``retry_after`` if it comes before the change's deadline, ``fail`` otherwise, and ``error`` when
a calendar cannot be read (fail-closed). docs/change-windows.md describes every param.

Modules: :mod:`workflows.spans` (pure UTC span algebra, shared with workflow code), :mod:`.rules` (the
window and freeze texts), :mod:`.calendars` (reading calendars and holidays), :mod:`.params`,
:mod:`.schedule` (the pure questions :func:`next_opening` and :func:`opening_end`) and
:mod:`.guardrail` (the check).
"""

from guardrails.builtin.change_window.calendars import (
    DEFAULT_CACHE,
    CalendarCache,
    CalendarError,
    LoadedCalendar,
)
from guardrails.builtin.change_window.guardrail import (
    EVIDENCE_DAYS,
    EVIDENCE_OPENINGS,
    ChangeWindow,
)
from guardrails.builtin.change_window.params import (
    CalendarEntry,
    ChangeWindowParams,
    FreezeEntry,
    HolidayEntry,
    WindowEntry,
)
from guardrails.builtin.change_window.rules import Freeze, Window, parse_freeze, parse_window
from guardrails.builtin.change_window.schedule import (
    SEARCH_DAYS,
    Schedule,
    build_schedule,
    next_opening,
    opening_end,
)
from workflows.spans import (
    Opening,
    Span,
    earliest_common_opening,
    first_opening,
    intersect,
)

__all__ = [
    "DEFAULT_CACHE",
    "EVIDENCE_DAYS",
    "EVIDENCE_OPENINGS",
    "SEARCH_DAYS",
    "CalendarCache",
    "CalendarEntry",
    "CalendarError",
    "ChangeWindow",
    "ChangeWindowParams",
    "Freeze",
    "FreezeEntry",
    "HolidayEntry",
    "LoadedCalendar",
    "Opening",
    "Schedule",
    "Span",
    "Window",
    "WindowEntry",
    "build_schedule",
    "earliest_common_opening",
    "first_opening",
    "intersect",
    "next_opening",
    "opening_end",
    "parse_freeze",
    "parse_window",
]
