"""Heartbeats from a background task while an activity works.

A dead worker is noticed within the heartbeat timeout, and cancellation reaches the activity.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from datetime import timedelta
from types import TracebackType
from typing import Any

from temporalio import activity

from workflows.progress_models import HEARTBEAT_THROTTLE

__all__ = ["Heartbeat", "send_window"]


_current_heartbeat: contextvars.ContextVar[Heartbeat | None] = contextvars.ContextVar(
    "changeguard_heartbeat", default=None
)


class Heartbeat:
    """Heartbeat with progress details from a background task while an activity works.

    Outside an activity (plain unit tests, scripts) it does nothing. The interval is a third of the
    activity's heartbeat timeout (the SDK throttles heartbeats further), else ``default_interval``.
    Details are resume hints only: a retried attempt must re-read the real state.

    Beats are handed to the SDK as the SDK sends them to the server: the first at once, then at
    most one per :func:`send_window` (the SDK's own throttle), carrying the details as they are
    when it goes. Details updated several times within one window (a stage per HTTP call, a
    checkpoint per target) are encoded once, not once per update: the SDK would send only the
    last of them anyway, after encoding each (12 % of a worker's CPU in a 2,000-target rollout).
    Leaving the block hands the latest details over at once, so an attempt's last heartbeat (the
    one a retry or a resumed attempt reads) carries its last checkpoint.

    Heartbeats nest: inside another active ``Heartbeat`` (an activity heartbeating around a change
    kind that heartbeats too) a new one starts no task of its own; its details are merged into the
    outer one's and beat through it, and the outer details are restored when the inner block ends.
    So one activity never interleaves two streams of heartbeat details.

    Example::

        async with Heartbeat(target="web-01", stage="reading") as beat:
            ...
            beat.update(stage="deploying")

    Args:
        default_interval: seconds between heartbeats when the activity has no heartbeat timeout.
        refresh: called before every background beat; its fields update the details (details
            that depend on the time, such as how long progress has stood still).
        details: the initial progress details.
    """

    def __init__(
        self,
        *,
        default_interval: float = 10.0,
        refresh: Callable[[], dict[str, Any]] | None = None,
        **details: Any,
    ) -> None:
        self.details: dict[str, Any] = dict(details)
        self.default_interval = default_interval
        self._refresh = refresh
        self._task: asyncio.Task[None] | None = None
        self._active = False
        self._outer: Heartbeat | None = None
        self._outer_details: dict[str, Any] = {}
        self._token: contextvars.Token[Heartbeat | None] | None = None
        self._window = 0.0
        self._sent_at: float | None = None
        self._flush: asyncio.TimerHandle | None = None

    def update(self, **details: Any) -> None:
        """Change the progress details and heartbeat them at once."""
        self.details.update(details)
        if self._outer is not None:
            self._outer.update(**details)
        else:
            self._beat()

    def _beat(self) -> None:
        """Beat now, or once the window since the last beat ends (with the details by then)."""
        if not self._active or self._flush is not None:
            return  # a beat is due at the window's end: it carries these details too
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._sent_at is None or now - self._sent_at >= self._window:
            self._send(now)
        else:
            self._flush = loop.call_at(self._sent_at + self._window, self._send_due)

    def _send(self, now: float) -> None:
        self._sent_at = now
        activity.heartbeat(dict(self.details))

    def _send_due(self) -> None:
        self._flush = None
        if self._active:
            self._send(asyncio.get_running_loop().time())

    def _interval(self) -> float:
        timeout = activity.info().heartbeat_timeout
        if timeout is None or timeout <= timedelta(0):
            return self.default_interval
        return max(0.05, timeout.total_seconds() / 3)

    async def _run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if self._refresh is not None:
                self.details.update(self._refresh())
            self._beat()

    async def __aenter__(self) -> Heartbeat:
        outer = _current_heartbeat.get()
        if outer is not None and outer._active:
            self._outer, self._outer_details = outer, dict(outer.details)
            outer.update(**self.details)
        elif activity.in_activity():
            self._active = True
            self._window = send_window()
            self._token = _current_heartbeat.set(self)
            self._beat()
            self._task = asyncio.create_task(self._run(self._interval()), name="heartbeat")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._outer is not None:
            self._outer.details = self._outer_details
            self._outer = None
            return
        flush, self._flush = self._flush, None
        if flush is not None:  # details not handed over yet: the attempt's latest count
            flush.cancel()
            self._send(asyncio.get_running_loop().time())
        self._active = False
        if self._token is not None:
            _current_heartbeat.reset(self._token)
            self._token = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # asyncio.wait neither raises the task's CancelledError nor swallows our own.
            await asyncio.wait({task})


def send_window() -> float:
    """Seconds between two beats the SDK sends this activity's server: ``min(0.8 x timeout, 1 s)``.

    The worker caps the SDK's throttle at :data:`~workflows.progress_models.HEARTBEAT_THROTTLE`
    (``max_heartbeat_throttle_interval``); without a heartbeat timeout the SDK throttles at its
    default (30 s), and the cap is used here all the same.
    """
    cap = HEARTBEAT_THROTTLE.total_seconds()
    timeout = activity.info().heartbeat_timeout
    if timeout is None or timeout <= timedelta(0):
        return cap
    return min(cap, 0.8 * timeout.total_seconds())
