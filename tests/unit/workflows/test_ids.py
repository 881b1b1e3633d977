"""Workflow ids: formats are contract (committed histories carry them), built and parsed in one place."""

from __future__ import annotations

import re

from workflows import ids


def test_every_id_keeps_its_format() -> None:
    assert re.fullmatch(r"chg-[0-9a-f]{12}", ids.new_change_id())
    assert ids.gate_id("chg-1", 2) == "chg-1/gate-2"
    assert ids.checks_id("chg-1", "ab12cd34") == "chg-1/checks-ab12cd34"
    assert ids.batch_id("chg-1", "apply", "web-01") == "chg-1/apply-web-01"
    assert ids.events_id("chg-1") == "chg-1/events"
    assert ids.lock_id("web-01") == "lock/web-01"


def test_parsing_inverts_building() -> None:
    assert ids.lock_target(ids.lock_id("db.main")) == "db.main"
    assert ids.lock_target("not-a-lock") == "not-a-lock"
    for child in (ids.gate_id("chg-9", 1), ids.batch_id("chg-9", "revert", "h1"), "chg-9"):
        assert ids.change_of(child) == "chg-9"
