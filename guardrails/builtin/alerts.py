"""``no-firing-alerts``: no change starts while a matching alert fires in Alertmanager.

An incident in progress blocks changes: changing a system that is already on fire makes the
incident harder to understand and to fix. The check asks Alertmanager's ``GET /api/v2/alerts``
for active, uninhibited alerts matching the policy's matchers (Alertmanager syntax, e.g.
``severity=~"critical|page"``, ``service="web"``; ``{environment}`` is replaced by the change's
environment). Silenced alerts are ignored unless ``include_silenced`` is set: a silence is how an
operator says "known, handled". Any match fails the check; an unreachable Alertmanager or an
answer it cannot read is an ``error`` (fail-closed), never an exception.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import httpx
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from guardrails.base import CheckContext, Guardrail
from guardrails.builtin._params import excerpt, http_url, positive
from workflows.models import Category, CheckResult, Duration

MAX_ALERTS_IN_REASON = 10
"""How many alerts a failure's reason lists."""
MAX_LABELS_PER_ALERT = 4
"""How many labels besides ``alertname`` a listed alert shows."""
KEY_LABELS = ("severity", "service", "team", "environment", "env", "host", "instance", "job")
"""Labels shown first when an alert is listed, in this order; others fill the remaining places."""

_MATCHER = re.compile(
    r'^\s*[A-Za-z_][A-Za-z0-9_]*\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|[^"\s]*)\s*$'
)


def _check_matcher(value: str) -> str:
    if not _MATCHER.match(value):
        raise PydanticCustomError(
            "matcher",
            "{message}",
            {
                "message": f"{value!r} is not an Alertmanager matcher; write e.g. "
                "'severity=~\"critical|page\"' or 'service=\"web\"'"
            },
        )
    return value.strip()


AlertmanagerUrl = Annotated[str, AfterValidator(http_url("http://alertmanager:9093"))]


class NoFiringAlertsParams(BaseModel):
    """Params of ``no-firing-alerts``: which Alertmanager, which alerts count, how long to wait."""

    model_config = ConfigDict(extra="forbid")

    url: AlertmanagerUrl = Field(description="Alertmanager base URL, e.g. http://alertmanager:9093")
    matchers: list[Annotated[str, AfterValidator(_check_matcher)]] = Field(
        description="Alertmanager matchers, all of which an alert must match to block; "
        "may use the {environment} placeholder; an empty list matches every alert"
    )
    include_silenced: bool = Field(
        default=False, description="whether silenced alerts block changes too"
    )
    timeout: Annotated[Duration, AfterValidator(positive)] = timedelta(seconds=10)


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _since(text: str) -> str:
    try:
        return f"{datetime.fromisoformat(text).astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    except (TypeError, ValueError):
        return str(text)


def _key_labels(labels: dict[str, str]) -> str:
    keys = [k for k in KEY_LABELS if k in labels]
    keys += sorted(k for k in labels if k not in keys and k != "alertname")
    pairs = ", ".join(f'{k}="{_quoted(labels[k])}"' for k in keys[:MAX_LABELS_PER_ALERT])
    return f"{{{pairs}}}"


def describe_alert(alert: dict[str, Any]) -> str:
    """One line for an alert: name, key labels, start time and summary."""
    labels = alert.get("labels") or {}
    summary = (alert.get("annotations") or {}).get("summary")
    text = (
        f"{labels.get('alertname', '(no alertname)')}{_key_labels(labels)} "
        f"since {_since(alert.get('startsAt', '?'))}"
    )
    return f"{text}: {summary}" if summary else text


class NoFiringAlerts(Guardrail[NoFiringAlertsParams]):
    """Fail while an alert matching the policy's matchers fires in Alertmanager."""

    name = "no-firing-alerts"
    category = Category.IN_FLIGHT
    params_model = NoFiringAlertsParams
    default_owner = "sre"
    default_timeout = timedelta(seconds=20)
    description = "no matching alert is firing in Alertmanager (an incident blocks changes)"

    async def check(self, params: NoFiringAlertsParams, ctx: CheckContext) -> CheckResult:
        """Ask Alertmanager once; never raises for network or Alertmanager problems."""
        matchers = [
            m.replace("{environment}", _quoted(ctx.change.environment)) for m in params.matchers
        ]
        endpoint = params.url.rstrip("/") + "/api/v2/alerts"
        query: dict[str, str | list[str]] = {
            "filter": matchers,
            "active": "true",
            "silenced": "true" if params.include_silenced else "false",
            "inhibited": "false",
        }
        evidence: dict[str, Any] = {"matchers": matchers}
        try:
            async with httpx.AsyncClient(timeout=params.timeout.total_seconds()) as client:
                response = await client.get(endpoint, params=query)
        except (httpx.HTTPError, OSError) as exc:
            detail = str(exc).strip()
            error = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
            return ctx.error(
                f"cannot list alerts from Alertmanager at {params.url}: {error}",
                remedy=f"make Alertmanager at {params.url} reachable from the worker, then recheck",
                evidence={**evidence, "error": type(exc).__name__},
            )
        try:
            alerts = response.json() if response.is_success else None
        except ValueError:
            alerts = None
        if not isinstance(alerts, list) or not all(isinstance(a, dict) for a in alerts):
            remedy = (
                f"fix the matchers {matchers} in the policy"
                if response.status_code == 400
                else f"check that {params.url} is the base URL of a healthy Alertmanager"
            )
            return ctx.error(
                f"Alertmanager at {params.url} answered {response.status_code} without a list "
                f"of alerts: {excerpt(response.text) or '(empty body)'}",
                remedy=remedy,
                evidence={**evidence, "http_status": response.status_code},
            )

        where = " and ".join(matchers) if matchers else "any labels"
        if not alerts:
            return ctx.passed(
                f"no {'' if params.include_silenced else 'unsilenced '}alert matching "
                f"{where} is firing",
                evidence={**evidence, "fingerprints": []},
            )
        alerts.sort(key=lambda a: (str(a.get("startsAt", "")), str(a.get("fingerprint", ""))))
        listed = "; ".join(describe_alert(a) for a in alerts[:MAX_ALERTS_IN_REASON])
        more = len(alerts) - MAX_ALERTS_IN_REASON
        count = "1 alert" if len(alerts) == 1 else f"{len(alerts)} alerts"
        incidents: dict[str, str] = {}
        for a in alerts:
            labels = a.get("labels") or {}
            name = labels.get("alertname", "(no alertname)")
            team = labels.get("team")
            incidents.setdefault(name, f"{name} (owner: {team})" if team else name)
        noun = "incident" if len(incidents) == 1 else "incidents"
        return ctx.failed(
            f"{count} matching {where} firing: {listed}"
            + (f"; and {more} more" if more > 0 else ""),
            remedy=(
                f"resolve or silence the {noun} {', '.join(incidents.values())} before changing; "
                "an incident in progress blocks changes"
            ),
            evidence={**evidence, "fingerprints": [a.get("fingerprint") for a in alerts]},
        )
