"""The HTTP client stack every activity uses must not search the import path on each request.

httpcore calls ``import sniffio`` inside every request (its locks, events and cancellation
shields); without the package each call walked ``sys.path`` again, 16 % of a worker's busy CPU in
``bench/rollout.py``. ``sniffio`` is a dependency for that reason alone.
"""

from __future__ import annotations

import builtins
import sys
from typing import Any

import httpx
import pytest

from demo.fleet import FleetServer


async def test_an_http_request_imports_nothing_it_has_to_search_for(
    fleet: FleetServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed: list[str] = []
    real_import = builtins.__import__

    def watching(name: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return real_import(name, *args, **kwargs)
        except ImportError:
            failed.append(name)
            raise

    async with httpx.AsyncClient(base_url=fleet.url, trust_env=False) as http:
        await http.get("/healthz")  # the pool, its connection and the first imports
        monkeypatch.setattr(builtins, "__import__", watching)
        for _ in range(3):
            (await http.get("/healthz")).raise_for_status()
    assert failed == []
    assert "sniffio" in sys.modules
