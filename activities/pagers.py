"""Pagers: how a change tells its owner that it needs a person, and the ``page`` activity.

A pager is a class with ``name``, ``params_model`` and ``async def page(self, params, inp)`` that
returns a :class:`~workflows.rollout_models.PageResult`. Pagers register like guardrails and change
kinds do: through the ``changeguard.pagers`` entry-point group, validated against the contract,
duplicates refused. Built-ins: ``webhook`` (a JSON POST) and ``log`` (a structlog warning).

Each pager's params come from the worker's settings (``PagerActivities(pager_params=...)``), not
from the workflow: where pages go is the deployment's business, and URLs or tokens stay out of
workflow history.

A pager that could not deliver raises a retryable ``TargetUnavailable`` with a jittered
``next_retry_delay``, so Temporal retries it; the ``dedup_key`` travels with every attempt so a
receiver collapses repeats into one incident.
"""

from __future__ import annotations

from abc import abstractmethod
from datetime import timedelta
from typing import Annotated, Any, ClassVar, TypeVar

import httpx
import structlog
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.resilience import retryable_error
from guardrails.builtin._params import http_url, positive
from guardrails.plugins import (
    Plugin,
    PluginKind,
    PluginRegistry,
    subclass_contract,
    validation_problems,
)
from workflows.errors import INVALID_INPUT, TARGET_UNAVAILABLE
from workflows.models import Duration
from workflows.rollout_models import PageInput, PageResult

__all__ = [
    "PAGERS",
    "PAGER_GROUP",
    "LogPager",
    "LogParams",
    "Pager",
    "PagerActivities",
    "WebhookPager",
    "WebhookParams",
    "default_registry",
    "new_registry",
]

P = TypeVar("P", bound=BaseModel)

PAGER_GROUP = "changeguard.pagers"

BODY_EXCERPT = 200
"""How many characters of a receiver's error answer an error quotes."""

log = structlog.get_logger(__name__)


class Pager(Plugin[P]):
    """Base class of every pager."""

    async_methods: ClassVar[tuple[str, ...]] = ("page",)
    unimplemented: ClassVar[str] = "it must implement page"

    @abstractmethod
    async def page(self, params: P, inp: PageInput) -> PageResult:
        """Deliver one page; raise a retryable error when it could not be delivered."""


PAGERS: PluginKind[Pager[Any]] = PluginKind(
    kind="pager", group=PAGER_GROUP, validate=subclass_contract(Pager, "activities.pagers.Pager")
)
"""The pager plug-in kind: its entry-point group and contract."""


def new_registry() -> PluginRegistry[Pager[Any]]:
    """An empty pager registry."""
    return PAGERS.new_registry()


def default_registry() -> PluginRegistry[Pager[Any]]:
    """A registry with every pager advertised through entry points (the built-ins included)."""
    return PAGERS.default_registry()


# --------------------------------------------------------------------------------------------------
# Built-ins
# --------------------------------------------------------------------------------------------------

HttpUrl = Annotated[str, AfterValidator(http_url("https://pager.example.com/hooks/changeguard"))]


class WebhookParams(BaseModel):
    """Params of the ``webhook`` pager."""

    model_config = ConfigDict(extra="forbid")

    url: HttpUrl = Field(description="where the page is POSTed as JSON")
    timeout: Annotated[Duration, AfterValidator(positive)] = timedelta(seconds=10)
    headers: dict[str, str] = Field(
        default_factory=dict, description="extra request headers, e.g. an Authorization token"
    )


class WebhookPager(Pager[WebhookParams]):
    """POST the page as JSON; any 2xx answer is delivery.

    The body is the :class:`PageInput` as JSON (``dedup_key`` included); the ``Idempotency-Key``
    header carries the ``dedup_key`` too. Any other answer, a timeout or a refused connection
    raises a retryable ``TargetUnavailable``: a page must not be dropped because the receiver
    hiccupped, and the dedup key keeps retries from paging twice.
    """

    name: ClassVar[str] = "webhook"
    params_model: ClassVar[type[BaseModel]] = WebhookParams
    description: ClassVar[str] = "POST the page as JSON to a URL"

    async def page(self, params: WebhookParams, inp: PageInput) -> PageResult:
        """POST the page; raises a retryable ``TargetUnavailable`` unless the answer is 2xx."""
        headers = {**params.headers, "Idempotency-Key": inp.dedup_key}
        try:
            async with httpx.AsyncClient(
                timeout=params.timeout.total_seconds(), trust_env=False
            ) as client:
                response = await client.post(
                    params.url, json=inp.model_dump(mode="json"), headers=headers
                )
        except httpx.TimeoutException as exc:
            raise retryable_error(
                f"page {inp.dedup_key}: POST {params.url} timed out ({type(exc).__name__})",
                type=TARGET_UNAVAILABLE,
            ) from exc
        except (httpx.HTTPError, OSError) as exc:
            raise retryable_error(
                f"page {inp.dedup_key}: POST {params.url} failed: {type(exc).__name__}: {exc}",
                type=TARGET_UNAVAILABLE,
            ) from exc
        if not response.is_success:
            text = " ".join(response.text.split())[:BODY_EXCERPT]
            raise retryable_error(
                f"page {inp.dedup_key}: POST {params.url} answered {response.status_code}: "
                f"{text or response.reason_phrase}",
                type=TARGET_UNAVAILABLE,
                details={"status": response.status_code},
            )
        return PageResult(
            pager=self.name,
            delivered=True,
            detail=f"POST {params.url} answered {response.status_code}",
        )


class LogParams(BaseModel):
    """Params of the ``log`` pager (none)."""

    model_config = ConfigDict(extra="forbid")


class LogPager(Pager[LogParams]):
    """Write the page as a structlog warning line; for development and as a last resort."""

    name: ClassVar[str] = "log"
    params_model: ClassVar[type[BaseModel]] = LogParams
    description: ClassVar[str] = "log the page as a warning"

    async def page(self, params: LogParams, inp: PageInput) -> PageResult:
        """Log the page; always delivered."""
        log.warning(
            "page",
            change_id=inp.change_id,
            owner=inp.owner,
            severity=inp.severity,
            summary=inp.summary,
            details=inp.details,
            dedup_key=inp.dedup_key,
        )
        return PageResult(pager=self.name, delivered=True, detail="logged as a warning")


# --------------------------------------------------------------------------------------------------
# The activity
# --------------------------------------------------------------------------------------------------


class PagerActivities:
    """The ``page`` activity, bound to a pager registry and each pager's params.

    Args:
        registry: the pagers (default: every entry point).
        pager_params: each pager's params by pager name, from the worker's settings
            (``{"webhook": {"url": "https://..."}}``); a pager not listed gets ``{}``.
    """

    def __init__(
        self,
        registry: PluginRegistry[Pager[Any]] | None = None,
        pager_params: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.registry = registry if registry is not None else default_registry()
        self.pager_params = dict(pager_params or {})

    @activity.defn(name="page")
    async def page(self, inp: PageInput) -> PageResult:
        """Deliver a page through the named pager.

        Raises:
            ApplicationError: ``InvalidInput`` (not retried) for an unknown pager or params that do
                not validate; the pager's own retryable errors otherwise.
        """
        try:
            pager = self.registry.get(inp.pager)
        except KeyError as exc:
            raise ApplicationError(
                str(exc.args[0]), type=INVALID_INPUT, non_retryable=True
            ) from exc
        try:
            params = pager.parse_params(self.pager_params.get(inp.pager, {}))
        except ValidationError as exc:
            problems = "; ".join(validation_problems(exc, f"pagers.{inp.pager}"))
            raise ApplicationError(
                f"the {inp.pager} pager is misconfigured in the worker settings: {problems}",
                type=INVALID_INPUT,
                non_retryable=True,
            ) from exc
        result = await pager.page(params, inp)
        log.info(
            "paged",
            pager=inp.pager,
            owner=inp.owner,
            dedup_key=inp.dedup_key,
            delivered=result.delivered,
        )
        return result
