"""The ``observe_signals`` activity: read a change's health signals and classify each one.

Two sources: ``fleet`` reads the target API's own ``/metrics`` (Prometheus text; ``base_url`` from
the change's params), one series per target; ``prometheus`` evaluates a PromQL instant query. Each
signal's value is its worst (highest) sample, classified by :func:`classify`.

A source that cannot be read (no ``base_url``, a refused connection, an answer that is not what a
metrics endpoint or Prometheus says) gives that signal ``insufficient_data`` with the reason in
``detail``; it never raises, so one broken source never hides the other signals' readings. The
policy decides what insufficient data means (by default: wait, then page).
"""

from __future__ import annotations

import asyncio
import math
import re
from typing import Any

import httpx
import structlog
from temporalio import activity

from guardrails.builtin.prometheus_query import render_labels, render_query
from workflows.models import ChangeContext, Target
from workflows.rollout_models import (
    ObserveInput,
    ObserveResult,
    SignalReading,
    SignalSpec,
    SignalState,
)

__all__ = ["MonitoringActivities", "classify", "parse_metrics"]

log = structlog.get_logger(__name__)

BODY_EXCERPT = 200
"""How many characters of an unexpected answer a reading quotes."""

_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?$")
_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


class _Unreadable(Exception):
    """A signal's source could not be read; the message says why."""


def classify(
    value: float | None,
    spec: SignalSpec,
    *,
    reporting: int,
    previous: SignalState | None = None,
) -> SignalState:
    """Classify a signal's worst value against its thresholds.

    Args:
        value: the worst sample, or None when nothing reported.
        spec: the signal, with ``degraded_above``, ``critical_above`` and ``min_samples``.
        reporting: how many targets (series) reported a value.
        previous: the signal's state at the previous observation, if any.

    Returns:
        ``insufficient_data`` with fewer than ``min_samples`` reporting; ``critical`` at or above
        ``critical_above``; ``degraded`` at or above ``degraded_above``; ``recovering`` when below
        both but previously ``degraded`` or ``critical``; else ``ok``.
    """
    if value is None or reporting < spec.min_samples:
        return SignalState.INSUFFICIENT_DATA
    if value >= spec.critical_above:
        return SignalState.CRITICAL
    if value >= spec.degraded_above:
        return SignalState.DEGRADED
    if previous in (SignalState.DEGRADED, SignalState.CRITICAL):
        return SignalState.RECOVERING
    return SignalState.OK


def parse_metrics(text: str, metric: str) -> list[tuple[dict[str, str], float]]:
    """The ``(labels, value)`` samples of one metric in Prometheus text exposition format.

    Comments, other metrics and lines that do not parse are skipped.
    """
    found = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is None or m.group(1) != metric:
            continue
        labels = {
            k: re.sub(r"\\[\\\"n]", lambda e: _UNESCAPE[e.group(0)], v)
            for k, v in _LABEL.findall(m.group(2) or "")
        }
        try:
            found.append((labels, float(m.group(3))))
        except ValueError:
            continue
    return found


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat[:BODY_EXCERPT] + ("…" if len(flat) > BODY_EXCERPT else "")


def _error(exc: BaseException) -> str:
    detail = str(exc).strip()
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


class MonitoringActivities:
    """The bake's observation activity.

    Args:
        trust_env: whether HTTP clients honour proxy variables (off: loopback and in-cluster
            endpoints must not be sent through a proxy meant for people).
    """

    def __init__(self, *, trust_env: bool = False) -> None:
        self.trust_env = trust_env

    @activity.defn(name="observe_signals")
    async def observe_signals(self, inp: ObserveInput) -> ObserveResult:
        """Read every requested signal (in parallel) and classify each one."""
        metrics: dict[str, asyncio.Task[str]] = {}  # one /metrics read per base URL per call
        readings = await asyncio.gather(*(self._observe(inp, s, metrics) for s in inp.signals))
        for r in readings:
            log.info(
                "signal observed",
                signal=r.signal,
                state=r.state.value,
                value=r.value,
                detail=r.detail,
            )
        return ObserveResult(readings=list(readings))

    async def _observe(
        self, inp: ObserveInput, spec: SignalSpec, metrics: dict[str, asyncio.Task[str]]
    ) -> SignalReading:
        try:
            if spec.source == "fleet":
                where, samples = await self._fleet(inp, spec, metrics)
            else:
                where, samples = await self._prometheus(inp, spec)
        except _Unreadable as exc:
            return SignalReading(
                signal=spec.name, state=SignalState.INSUFFICIENT_DATA, detail=str(exc)
            )
        return _reading(inp, spec, where, samples)

    async def _fleet(
        self, inp: ObserveInput, spec: SignalSpec, metrics: dict[str, asyncio.Task[str]]
    ) -> tuple[str, dict[str, float]]:
        base_url = inp.params.get("base_url")
        if not isinstance(base_url, str) or not base_url:
            raise _Unreadable(
                f"no {spec.metric} to read: the change's params have no base_url "
                f"(change kind {inp.kind!r})"
            )
        url = base_url.rstrip("/") + "/metrics"
        if url not in metrics:
            metrics[url] = asyncio.ensure_future(self._get_text(url, spec))
        text = await asyncio.shield(metrics[url])
        wanted = set(inp.targets)
        samples: dict[str, float] = {}
        for labels, value in parse_metrics(text, spec.metric):
            target = labels.get(spec.target_label)
            if target is not None and (not wanted or target in wanted):
                samples[target] = value
        return f"{spec.metric} at {url}", samples

    async def _get_text(self, url: str, spec: SignalSpec) -> str:
        try:
            async with httpx.AsyncClient(
                timeout=spec.timeout.total_seconds(), trust_env=self.trust_env
            ) as client:
                response = await client.get(url)
        except (httpx.HTTPError, OSError) as exc:
            raise _Unreadable(f"cannot read {url}: {_error(exc)}") from None
        if not response.is_success:
            raise _Unreadable(
                f"GET {url} answered {response.status_code}: {_excerpt(response.text)}"
            )
        return response.text

    async def _prometheus(
        self, inp: ObserveInput, spec: SignalSpec
    ) -> tuple[str, dict[str, float]]:
        assert spec.url is not None and spec.query is not None  # the model guarantees both
        change = ChangeContext(
            change_id=inp.change_id,
            kind=inp.kind,
            environment=inp.environment,
            targets=[Target(id=t) for t in inp.targets],
        )
        query = render_query(spec.query, change)
        endpoint = spec.url.rstrip("/") + "/api/v1/query"
        seconds = spec.timeout.total_seconds()
        try:
            async with httpx.AsyncClient(timeout=seconds, trust_env=self.trust_env) as client:
                response = await client.get(
                    endpoint, params={"query": query, "timeout": f"{seconds:g}"}
                )
        except (httpx.HTTPError, OSError) as exc:
            raise _Unreadable(f"cannot query Prometheus at {spec.url}: {_error(exc)}") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.get("status") != "success":
            why = (
                f"{body.get('errorType', 'error')}: {body.get('error', '')}"
                if isinstance(body, dict)
                else f"answered {response.status_code}: {_excerpt(response.text)}"
            )
            raise _Unreadable(f"Prometheus at {spec.url} did not evaluate `{query}`: {why}")
        return f"`{query}`", _prometheus_samples(body.get("data"), spec, query)


def _prometheus_samples(data: Any, spec: SignalSpec, query: str) -> dict[str, float]:
    """Samples of an instant query by target (the ``target_label``), else by rendered series."""
    kind = data.get("resultType") if isinstance(data, dict) else None
    try:
        if kind == "scalar":
            return {"scalar": float(data["result"][1])}
        if kind == "vector":
            out = {}
            for s in data["result"]:
                labels = dict(s["metric"])
                out[labels.get(spec.target_label) or render_labels(labels)] = float(s["value"][1])
            return out
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise _Unreadable(f"`{query}` gave a malformed {kind} result: {_error(exc)}") from None
    raise _Unreadable(f"`{query}` gave a {kind} result; write an instant vector or scalar query")


def _reading(
    inp: ObserveInput, spec: SignalSpec, where: str, samples: dict[str, float]
) -> SignalReading:
    """Classify the samples of one signal and say why in words."""
    finite = {t: v for t, v in sorted(samples.items()) if math.isfinite(v)}
    expected = len(inp.targets) if spec.source == "fleet" and inp.targets else None
    missing = sorted(set(inp.targets) - set(finite)) if expected is not None else []
    worst = max(finite.items(), key=lambda tv: tv[1]) if finite else None
    value = worst[1] if worst else None
    state = classify(value, spec, reporting=len(finite), previous=inp.previous.get(spec.name))
    reporting = f"{len(finite)} of {expected}" if expected is not None else f"{len(finite)}"
    parts = [f"{reporting} reporting"]
    if missing:
        parts.append(f"no data for {', '.join(missing[:10])}" + (" …" if len(missing) > 10 else ""))
    if len(finite) < len(samples):
        parts.append(f"{len(samples) - len(finite)} not a number")
    context = "; ".join(parts)
    bounds = f"degraded at {spec.degraded_above:g}, critical at {spec.critical_above:g}"
    if state is SignalState.INSUFFICIENT_DATA:
        detail = f"insufficient data: {where}: {context}; at least {spec.min_samples} needed"
    else:
        assert worst is not None
        detail = f"{state.value}: worst {worst[1]:g} on {worst[0]} ({where}; {context}; {bounds})"
    return SignalReading(
        signal=spec.name, state=state, value=value, detail=detail, per_target=finite
    )
