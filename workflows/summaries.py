"""One-line summaries for the Web UI: the change's ``static_summary`` and each command's ``summary``.

Temporal shows a ``summary`` beside every activity, timer and child in a workflow's timeline, and
the start's ``static_summary`` at the top of its page (docs/operators.md). These pure functions
word them: short (a summary is one line; the start's is at most 200 bytes) and deterministic, so
workflow code and the start helpers share them. User metadata is not part of command matching, so
adding or rewording a summary replays old histories unchanged (tests/replay proves it).
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from workflows.models import ChangeRequest, GuardrailReport

STATIC_SUMMARY_MAX_BYTES = 200
"""The Web UI's limit for a start's ``static_summary``."""
SUMMARY_MAX = 200
"""A command's summary stays one short line."""


def fit_bytes(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes (with an ellipsis when cut)."""
    text = " ".join(text.split())
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode(errors="ignore") + "..."


def line(text: str) -> str:
    """A command summary: one line, bounded."""
    return fit_bytes(text, SUMMARY_MAX)


def kind_verb(kind: str) -> str:
    """What a change kind does to a target, as a verb: ``http-deploy`` → ``deploy``."""
    return kind.rsplit("-", 1)[-1] or "apply"


def apply_summary(kind: str, target: str) -> str:
    """``deploy web-03``."""
    return line(f"{kind_verb(kind)} {target}")


def revert_summary(target: str) -> str:
    """``revert web-03``."""
    return line(f"revert {target}")


def check_summary(rule: str) -> str:
    """``check change-window``."""
    return line(f"check {rule}")


def static_summary(request: ChangeRequest | dict[str, Any]) -> str:
    """``http-deploy: Roll out 1.4.2 · 3 targets · prod · team payments · by alice`` (≤ 200 B)."""
    data = request.model_dump() if isinstance(request, ChangeRequest) else request
    targets = data.get("targets") or []
    count = len(targets) if isinstance(targets, list) else 0
    tail = (
        f" · {count} target{'s' if count != 1 else ''} · {data.get('environment', '')} · "
        f"team {data.get('team', '')} · by {data.get('requester', '')}"
    )
    head = f"{data.get('kind', '')}: {data.get('summary', '')}"
    room = STATIC_SUMMARY_MAX_BYTES - len(tail.encode())
    return fit_bytes(fit_bytes(head, max(room, 20)) + tail, STATIC_SUMMARY_MAX_BYTES)


def static_details(request: ChangeRequest | dict[str, Any], change_id: str) -> str:
    """The start's markdown details: what, where, who, and how it rolls out."""
    data = request.model_dump(mode="json") if isinstance(request, ChangeRequest) else request
    targets = [str(t.get("id", "")) for t in data.get("targets") or [] if isinstance(t, dict)]
    shown = ", ".join(f"`{t}`" for t in targets[:10])
    more = f" and {len(targets) - 10} more" if len(targets) > 10 else ""
    rollout = data.get("rollout") or {}
    waves = ", ".join(str(w) for w in rollout.get("waves") or []) or "default"
    lines = [
        f"**{change_id}** — {data.get('kind', '')} in **{data.get('environment', '')}**",
        "",
        str(data.get("summary", ""))[:500],
        "",
        f"- requester: {data.get('requester', '')} · team: {data.get('team', '')}",
        f"- targets ({len(targets)}): {shown}{more}",
        f"- waves: {waves} · max parallel {rollout.get('max_parallel', 5)} · "
        f"bake {rollout.get('bake', 0)}",
        "- act on it: Update `approve`, `resume`, `rollback`, `abort`; Signal `recheck` "
        "(see Current Details for the exact payload)",
    ]
    return "\n".join(lines)


def _zone(report: GuardrailReport | None) -> tuple[tzinfo, str]:
    """The time zone of the check whose wait sets ``retry_after`` (UTC when none says)."""
    if report is not None and report.retry_zone:  # the timing rules' one earliest start
        try:
            return ZoneInfo(report.retry_zone), report.retry_zone
        except Exception:  # an unknown zone: show UTC rather than fail
            return UTC, "UTC"
    if report is not None:
        for c in report.checks:
            name = c.evidence.get("timezone") if c.retry_after == report.retry_after else None
            if isinstance(name, str) and name:
                try:
                    return ZoneInfo(name), name
                except Exception:  # an unknown zone: show UTC rather than fail
                    break
    return UTC, "UTC"


def window_wait_summary(until: datetime, report: GuardrailReport | None) -> str:
    """``wait for window until Mon 09:00 Europe/Berlin``."""
    zone, name = _zone(report)
    local = until.astimezone(zone)
    return line(f"wait for window until {local.strftime('%a %H:%M')} {name}")


def clock(at: datetime) -> str:
    """``14:05`` (UTC), the time of day a timer fires."""
    return at.astimezone(UTC).strftime("%H:%M")


def day_clock(at: datetime) -> str:
    """``Wed 11:38 UTC``: a time that may be days away."""
    return at.astimezone(UTC).strftime("%a %H:%M UTC")
