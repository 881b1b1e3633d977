"""``prometheus-query``: a change starts only if every series of a PromQL query is within bounds.

The query is evaluated once, at Prometheus's own "now", through ``GET /api/v1/query``. The check
passes when every returned sample satisfies ``value <comparison> threshold`` (a scalar counts as one
sample); any sample that does not makes it fail, naming the series and its value.

No data is never a pass: a query that returns nothing proves nothing, so the check waits
(``no_data: wait``, the default, retrying after ``no_data_retry``) or fails (``no_data: fail``).
An unreachable Prometheus, a rejected query or an unexpected answer is an ``error`` (fail-closed),
never an exception.

Placeholders in the query, replaced before it is sent:

* ``{targets}``: the change's target ids as a regular-expression alternation (``web-01|web-02``),
  escaped for RE2 and for a PromQL double-quoted string; write it inside a regex matcher,
  e.g. ``fleet_error_ratio{host=~"{targets}"}``.
* ``{environment}``: the change's environment, escaped for a PromQL double-quoted string.

Other braces (label matchers) are left alone.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any, Literal

import httpx
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from guardrails.base import CheckContext, Guardrail
from guardrails.builtin._params import excerpt, http_url, positive
from workflows.models import Category, ChangeContext, CheckResult, Duration, format_duration

MAX_SAMPLES_IN_EVIDENCE = 20
"""How many samples a result keeps as evidence."""
MAX_SERIES_IN_REASON = 10
"""How many offending series a failure's reason lists."""
MAX_SERIES_IN_REMEDY = 3
"""How many offending series a failure's remedy names."""

Comparison = Literal["<", "<=", ">", ">=", "==", "!="]

_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
_WORDS = {
    "<": "below",
    "<=": "at or below",
    ">": "above",
    ">=": "at or above",
    "==": "equal to",
    "!=": "different from",
}
_RE2_SPECIAL = re.compile(r"([\\.+*?()|\[\]{}^$])")


HttpUrl = Annotated[str, AfterValidator(http_url("http://prometheus:9090"))]
"""An http(s) base URL, kept as the text the policy wrote."""


class PrometheusQueryParams(BaseModel):
    """Params of ``prometheus-query``: where, what, the bound, and what no data means."""

    model_config = ConfigDict(extra="forbid")

    url: HttpUrl = Field(description="Prometheus base URL, e.g. http://prometheus:9090")
    query: str = Field(
        min_length=1, description="PromQL; may use the {targets} and {environment} placeholders"
    )
    threshold: float = Field(allow_inf_nan=False)
    comparison: Comparison = Field(
        default="<", description="the check passes when every sample's value <comparison> threshold"
    )
    no_data: Literal["wait", "fail"] = "wait"
    no_data_retry: Annotated[Duration, AfterValidator(positive)] = timedelta(minutes=1)
    timeout: Annotated[Duration, AfterValidator(positive)] = timedelta(seconds=10)

    @field_validator("query")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise PydanticCustomError("query", "the query must not be blank")
        return v


def promql_string(text: str) -> str:
    """Escape text for the inside of a PromQL double-quoted string."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def targets_regex(change: ChangeContext) -> str:
    """The change's target ids as an RE2 alternation, ready for a PromQL double-quoted string."""
    return promql_string("|".join(_RE2_SPECIAL.sub(r"\\\1", t.id) for t in change.targets))


def render_query(query: str, change: ChangeContext) -> str:
    """Replace the ``{targets}`` and ``{environment}`` placeholders, leaving other braces alone."""
    return query.replace("{targets}", targets_regex(change)).replace(
        "{environment}", promql_string(change.environment)
    )


def render_labels(labels: dict[str, str]) -> str:
    """Render a series the way Prometheus shows it: ``name{host="web-03", job="fleet"}``."""
    name = labels.get("__name__", "")
    pairs = ", ".join(
        f'{k}="{promql_string(v)}"' for k, v in sorted(labels.items()) if k != "__name__"
    )
    return f"{name}{{{pairs}}}"


class _BadAnswer(Exception):
    """Prometheus answered something this check cannot read."""


def _samples(data: Any) -> tuple[str, list[tuple[dict[str, str], str]]]:
    """The result type and ``(labels, value text)`` samples of a query's ``data``, by labels."""
    if not isinstance(data, dict):
        raise _BadAnswer("the answer has no 'data' object")
    kind, result = data.get("resultType"), data.get("result", [])
    try:
        if kind == "scalar":
            return kind, [({}, str(result[1]))]
        if kind == "vector":
            samples = [(dict(s["metric"]), str(s["value"][1])) for s in result]
            return kind, sorted(samples, key=lambda s: sorted(s[0].items()))
    except (KeyError, IndexError, TypeError) as exc:
        raise _BadAnswer(f"a {kind} result is malformed ({type(exc).__name__}: {exc})") from None
    raise _BadAnswer(
        f"the query returned a {kind} result; write an instant vector or scalar query "
        "(e.g. wrap a range selector in rate() or max_over_time())"
    )


def _as_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


class PrometheusQuery(Guardrail[PrometheusQueryParams]):
    """Evaluate a PromQL query and pass when every sample is within the threshold."""

    name = "prometheus-query"
    category = Category.HEALTH
    params_model = PrometheusQueryParams
    default_owner = "observability"
    default_timeout = timedelta(seconds=20)
    description = "every series of a PromQL query is within a threshold (no data never passes)"

    async def check(self, params: PrometheusQueryParams, ctx: CheckContext) -> CheckResult:
        """Query Prometheus once; never raises for network or Prometheus problems."""
        query = render_query(params.query, ctx.change)
        endpoint = params.url.rstrip("/") + "/api/v1/query"
        evidence: dict[str, Any] = {
            "query": query,
            "comparison": params.comparison,
            "threshold": params.threshold,
        }
        seconds = params.timeout.total_seconds()
        try:
            async with httpx.AsyncClient(timeout=seconds) as client:
                response = await client.get(
                    endpoint, params={"query": query, "timeout": f"{seconds:g}"}
                )
        except (httpx.HTTPError, OSError) as exc:
            detail = str(exc).strip()
            error = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
            return ctx.error(
                f"cannot query Prometheus at {params.url}: {error}",
                remedy=f"make Prometheus at {params.url} reachable from the worker, then recheck",
                evidence={**evidence, "error": type(exc).__name__},
            )
        return self._judge(params, ctx, query, response, evidence)

    def _judge(
        self,
        params: PrometheusQueryParams,
        ctx: CheckContext,
        query: str,
        response: httpx.Response,
        evidence: dict[str, Any],
    ) -> CheckResult:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return ctx.error(
                f"Prometheus at {params.url} answered {response.status_code} without a JSON "
                f"query result: {excerpt(response.text) or '(empty body)'}",
                remedy=f"check that {params.url} is the base URL of a Prometheus server",
                evidence={**evidence, "http_status": response.status_code},
            )
        if body.get("warnings"):
            evidence["warnings"] = list(body["warnings"])
        if body.get("status") != "success":
            kind, text = body.get("errorType", "error"), body.get("error", excerpt(response.text))
            remedy = (
                f"fix the query `{params.query}` in the policy"
                if kind == "bad_data"
                else f"check Prometheus at {params.url} ({kind}), then recheck"
            )
            return ctx.error(
                f"Prometheus rejected `{query}`: {kind}: {text}",
                remedy=remedy,
                evidence={**evidence, "http_status": response.status_code, "error_type": kind},
            )
        try:
            kind, samples = _samples(body.get("data"))
        except _BadAnswer as exc:
            return ctx.error(
                f"cannot judge `{query}`: {exc}",
                remedy=f"fix the query `{params.query}` in the policy",
                evidence=evidence,
            )
        evidence["result_type"] = kind
        evidence["sample_count"] = len(samples)
        evidence["samples"] = [
            {"labels": labels, "value": value}
            for labels, value in samples[:MAX_SAMPLES_IN_EVIDENCE]
        ]
        if not samples:
            return self._no_data(params, ctx, query, evidence)

        word, bound = _WORDS[params.comparison], f"{params.threshold:g}"
        holds = _OPERATORS[params.comparison]
        bad = [(labels, v) for labels, v in samples if not holds(_as_float(v), params.threshold)]
        if kind == "scalar":
            value = samples[0][1]
            if not bad:
                return ctx.passed(f"`{query}` is {value}, {word} {bound}", evidence=evidence)
            evidence["violations"] = [{"labels": {}, "value": value}]
            return ctx.failed(
                f"`{query}` is {value}, not {word} {bound}",
                remedy=f"bring `{query}` {word} {bound} (now {value}), or fix what raises it",
                evidence=evidence,
            )
        if not bad:
            return ctx.passed(
                f"all {len(samples)} series of `{query}` are {word} {bound}", evidence=evidence
            )

        evidence["violations"] = [{"labels": labels, "value": v} for labels, v in bad]
        listed = "; ".join(
            f"{render_labels(labels)} = {v}" for labels, v in bad[:MAX_SERIES_IN_REASON]
        )
        more = len(bad) - MAX_SERIES_IN_REASON
        reason = (
            f"{len(bad)} of {len(samples)} series of `{query}` are not {word} {bound}: {listed}"
            + (f"; and {more} more" if more > 0 else "")
        )
        named = ", ".join(
            f"{render_labels(labels)} (now {v})" for labels, v in bad[:MAX_SERIES_IN_REMEDY]
        )
        if len(bad) > MAX_SERIES_IN_REMEDY:
            named += f" and {len(bad) - MAX_SERIES_IN_REMEDY} more series"
        return ctx.failed(
            reason,
            remedy=f"bring `{query}` {word} {bound} for {named}, or fix what raises it",
            evidence=evidence,
        )

    def _no_data(
        self,
        params: PrometheusQueryParams,
        ctx: CheckContext,
        query: str,
        evidence: dict[str, Any],
    ) -> CheckResult:
        check = (
            f"check in Prometheus at {params.url} that the series in `{query}` exist "
            "and that their scrape targets are up"
        )
        if params.no_data == "fail":
            return ctx.failed(
                f"`{query}` returned no data, and no data blocks this check (no_data: fail)",
                remedy=check,
                evidence=evidence,
            )
        retry = format_duration(params.no_data_retry)
        return ctx.wait(
            f"`{query}` returned no data yet",
            remedy=f"{check}; the check retries by itself in {retry}",
            retry_after=ctx.now + params.no_data_retry,
            evidence=evidence,
        )
