"""``http-health``: a change starts only if a health endpoint answers with the expected status.

Network problems are findings, not crashes: a refused connection or a timeout is a ``fail`` that
names the exception, so the gate reports it with an owner instead of retrying an error. Redirects
are not followed: the status the URL itself answers is what is judged.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Annotated, Any

import httpx
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from guardrails.base import CheckContext, Guardrail
from guardrails.builtin._params import excerpt, http_url
from workflows.models import Category, CheckResult, Duration

HealthUrl = Annotated[str, AfterValidator(http_url("http://service:8080/healthz"))]


class HttpHealthParams(BaseModel):
    """Params of ``http-health``: what to GET, the status that means healthy, how long to wait."""

    model_config = ConfigDict(extra="forbid")

    url: HealthUrl
    expect_status: int = Field(default=200, ge=100, le=599)
    timeout: Duration = timedelta(seconds=5)

    @field_validator("timeout")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if v <= timedelta(0):
            raise PydanticCustomError("timeout", "the timeout must be positive, e.g. '5s'")
        return v


class HttpHealth(Guardrail[HttpHealthParams]):
    """GET a URL and pass when it answers the expected status."""

    name = "http-health"
    category = Category.HEALTH
    params_model = HttpHealthParams
    default_owner = "service-owners"
    default_timeout = timedelta(seconds=15)
    description = "a health endpoint answers with the expected status"

    async def check(self, params: HttpHealthParams, ctx: CheckContext) -> CheckResult:
        """GET ``url`` once; never raises for network problems."""
        url, expected = params.url, params.expect_status
        started = time.perf_counter()
        try:
            async with httpx.AsyncClient(timeout=params.timeout.total_seconds()) as client:
                response = await client.get(url)
        except (httpx.HTTPError, OSError) as exc:
            latency_ms = round((time.perf_counter() - started) * 1000)
            detail = str(exc).strip()
            error = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
            return ctx.failed(
                f"GET {url} failed: {error}",
                remedy=f"make {url} reachable from the worker and answering {expected}",
                evidence={"error": type(exc).__name__, "latency_ms": latency_ms},
            )
        latency_ms = round((time.perf_counter() - started) * 1000)
        evidence: dict[str, Any] = {"status": response.status_code, "latency_ms": latency_ms}
        if response.status_code == expected:
            return ctx.passed(f"GET {url} answered {expected}", evidence=evidence)
        body = excerpt(response.text)
        return ctx.failed(
            f"GET {url} answered {response.status_code}, expected {expected}",
            remedy=f"restore {url} so that it answers {expected} "
            + (f"(body: {body})" if body else "(its answer had an empty body)"),
            evidence=evidence,
        )
