"""Operators act on a change in the real Temporal Web UI (dev server UI 2.54, headless Chromium).

Playwright drives Debian's ``/usr/bin/chromium`` through ``executable_path``: Playwright's own
browser downloads are impossible here, so ``playwright install`` is never run (install the browser
with ``infra/install-test-deps.sh``). The page may only talk to loopback; what it asks of anywhere
else (the UI's news feed) is refused. The click path is the one docs/operators.md describes under
"Acting from the Web UI": workflow list query → the change → More Actions → Send an Update / Send
a Signal → pick the name → paste the JSON → Submit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import httpx
import pytest
from playwright.async_api import BrowserContext, Locator, Page, Route, async_playwright, expect
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.audit import AuditActivities, SqliteAuditStore
from tests import fakes
from tests.fakes import Ledger, RecordingKind, Switch
from tests.helpers import start_dev_server, until_phase
from worker.main import build_worker
from workflows.models import (
    AuditAction,
    AuditQuery,
    AuditRecord,
    ChangeRequest,
    ChangeResult,
    ChangeStatus,
    Outcome,
    Phase,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # root in a container: no user namespaces for Chromium's sandbox
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
UI_TIMEOUT_MS = 15_000
"""Upper bound of every single browser step (a click, a field, an expected text)."""
expect.set_options(timeout=UI_TIMEOUT_MS)
OPERATORS = """\
operators:
  alice: [web-team, sre-leads]
  bob: [sre-leads]
"""


@dataclass
class UiServer:
    """The dev server with its Web UI, both on loopback."""

    env: WorkflowEnvironment
    url: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_until_serving(url: str, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    async with httpx.AsyncClient(timeout=2.0) as http:
        while True:
            try:
                if (await http.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the Web UI at {url} did not answer within {limit:.0f}s")
            await asyncio.sleep(0.2)


@pytest.fixture(scope="module")
async def ui_server() -> AsyncIterator[UiServer]:
    """A dev server with the Web UI on a free loopback port (changeguard's search attributes)."""
    port = _free_port()
    env = await start_dev_server(ui_port=port)
    try:
        url = f"http://127.0.0.1:{port}"
        await _wait_until_serving(url)
        yield UiServer(env, url)
    finally:
        await env.shutdown()


async def _loopback_only(route: Route) -> None:
    if urlsplit(route.request.url).hostname in ("127.0.0.1", "localhost"):
        await route.continue_()
    else:
        await route.abort()


@pytest.fixture(scope="module")
def chromium() -> Path:
    """Debian's Chromium; missing is an error, never a skip (the suite is green only if it ran)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: as root run 'bash infra/install-test-deps.sh'")
    return CHROMIUM


@pytest.fixture(scope="module")
async def browser(
    chromium: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[BrowserContext]:
    """Headless Chromium with a fresh profile; requests off loopback are refused."""
    profile = tmp_path_factory.mktemp("chromium-profile")
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(chromium),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1400, "height": 1000},
        )
        context.set_default_timeout(UI_TIMEOUT_MS)
        await context.route("**/*", _loopback_only)
        try:
            yield context
        finally:
            await context.close()


@pytest.fixture
async def page(browser: BrowserContext) -> AsyncIterator[Page]:
    """A fresh tab for one test."""
    tab = await browser.new_page()
    try:
        yield tab
    finally:
        await tab.close()


@pytest.fixture(autouse=True)
def reset() -> Ledger:
    RecordingKind.ledger = Ledger()
    Switch.outcome = "fail"
    return RecordingKind.ledger


@pytest.fixture
async def worker(
    ui_server: UiServer, task_queue: str, tmp_path: Path, store: SqliteAuditStore
) -> AsyncIterator[None]:
    """A worker with the fake registries; its audit directory puts bob in sre-leads."""
    (tmp_path / "operators.yaml").write_text(OPERATORS)
    audit = AuditActivities(store, f"yaml:{tmp_path / 'operators.yaml'}")
    async with build_worker(
        ui_server.env.client,
        task_queue=task_queue,
        guardrails=fakes.guardrails(),
        kinds=fakes.kinds(),
        audit=audit,
        max_cached_workflows=0,
    ):
        yield


@contextlib.asynccontextmanager
async def _screenshot_on_failure(page: Page, path: Path) -> AsyncIterator[None]:
    """On any failure, save what the browser showed and name the file in the error."""
    try:
        yield
    except BaseException as exc:
        with contextlib.suppress(Exception):
            await page.screenshot(path=str(path), full_page=True)
            exc.add_note(f"screenshot of the page at the failure: {path}")
        raise


async def _start_awaiting_approval(
    ui_server: UiServer, task_queue: str
) -> tuple[WorkflowHandle[Any, ChangeResult], ChangeStatus]:
    """Start a change that the approvable switch failure holds in AwaitingApproval."""
    req = ChangeRequest(
        change_id=f"ui-{uuid.uuid4().hex[:8]}",
        kind="recording",
        summary="needs approval",
        requester="alice",
        team="web",
        environment="prod",
        targets=[{"id": "t1"}, {"id": "t2"}],
        rollout={"waves": ["100%"], "bake": "0s"},
        policy={"guardrails": [{"use": "switch", "opt_out": {"approvers": ["sre-leads"]}}]},
    )
    handle = await ui_server.env.client.start_workflow(
        "GuardedChange", req, id=req.change_id, task_queue=task_queue, result_type=ChangeResult
    )
    status = await until_phase(handle, Phase.AWAITING_APPROVAL)
    assert status.awaiting_from == ["sre-leads"]
    assert status.report is not None
    return handle, status


async def _result(handle: WorkflowHandle[Any, ChangeResult]) -> ChangeResult:
    try:
        return await asyncio.wait_for(handle.result(), timeout=20)
    except TimeoutError:
        status = await handle.query("status", result_type=ChangeStatus)
        raise AssertionError(
            f"{handle.id} did not finish within 20s; {status.phase}: {status.message}"
        ) from None


async def _listed(ui_server: UiServer, query: str, workflow_id: str, limit: float = 20.0) -> None:
    """Wait until the server's visibility lists ``workflow_id`` under ``query``."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        async for wf in ui_server.env.client.list_workflows(query):
            if wf.id == workflow_id:
                return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{workflow_id} not listed by {query!r} within {limit:.0f}s")


async def _open_change(page: Page, ui_server: UiServer, change_id: str) -> None:
    await page.goto(f"{ui_server.url}/namespaces/default/workflows/{change_id}")
    await expect(page.get_by_role("button", name="More Actions")).to_be_visible()


async def _toast(page: Page, text: str) -> None:
    """The UI's notification (shown as a toast and repeated in a screen-reader live region)."""
    await expect(page.get_by_text(text, exact=True).first).to_be_visible()


async def _send(
    page: Page, action: Literal["Update", "Signal"], name: str, payload: dict[str, Any]
) -> Locator:
    """More Actions → Send an Update / a Signal, pick ``name``, paste the JSON, Submit.

    Returns the dialog (still open when the UI shows an error in it).
    """
    await page.get_by_role("button", name="More Actions").click()
    if action == "Update":
        await page.get_by_role("menuitem", name="Send an Update").click()
        dialog = page.get_by_role("dialog", name="Send an Update")
        picker = dialog.get_by_role("button", name="Select an Update")
    else:
        await page.get_by_role("menuitem", name="Send a Signal").click()
        dialog = page.get_by_role("dialog", name="Send a Signal")
        picker = dialog.get_by_role("button", name="Select a signal")
    await picker.click()  # lists what the worker declares (its metadata query)
    await dialog.get_by_role("option", name=name, exact=True).click()
    data = dialog.get_by_role("textbox", name="Data")
    await data.fill(json.dumps(payload))
    # Leaving the editor reformats the JSON and grows the dialog: clicking the hint below first
    # keeps Submit from moving between mouse-down and mouse-up (that click would do nothing).
    await dialog.get_by_text("Single JSON payload supported.").click()
    await dialog.get_by_role("button", name="Submit").click()
    return dialog


PEOPLE_ACTIONS = {
    AuditAction.APPROVAL,
    AuditAction.APPROVAL_REJECTED,
    AuditAction.ABORT,
    AuditAction.ROLLBACK,
    AuditAction.RESUME,
    AuditAction.RECHECK,
}


def people_actions(store: SqliteAuditStore, change_id: str) -> list[AuditRecord]:
    """The change's ledger records of what people did (not its start, gates, effects, outcome)."""
    return [r for r in store.list(AuditQuery(change_id=change_id)) if r.action in PEOPLE_ACTIONS]


async def test_requester_cannot_approve_from_the_web_ui_and_abort_works(
    ui_server: UiServer,
    worker: None,
    task_queue: str,
    page: Page,
    store: SqliteAuditStore,
    reset: Ledger,
    tmp_path: Path,
) -> None:
    """The UI shows the validator's four-eyes refusal at once; an abort update sent there ends it."""
    handle, status = await _start_awaiting_approval(ui_server, task_queue)
    assert status.report is not None
    async with _screenshot_on_failure(page, tmp_path / "failure.png"):
        await _open_change(page, ui_server, handle.id)
        own = {
            "guardrails": ["switch"],
            "approver": "alice",
            "reason": "I am sure",
            "report_hash": status.report.report_hash,
            "expires_in": "1h",
        }
        dialog = await _send(page, "Update", "approve", own)
        await expect(dialog.get_by_role("alert").filter(has_text="four eyes")).to_contain_text(
            "four eyes: alice requested this change and cannot approve switch"
        )
        await dialog.get_by_role("button", name="Cancel").last.click()
        await expect(dialog).to_be_hidden()
        assert (await until_phase(handle, Phase.AWAITING_APPROVAL)).approvals == []

        stop = {"operator": "bob", "reason": "superseded by change 43"}
        dialog = await _send(page, "Update", "abort", stop)
        await _toast(page, "Update successful")
        await expect(dialog).to_be_hidden()

    result = await _result(handle)
    assert (result.outcome, reset.applied) == (Outcome.ABORTED, [])
    records = people_actions(store, handle.id)
    assert [(r.action, r.actor, r.reason) for r in records] == [
        (AuditAction.ABORT, "bob", "superseded by change 43")
    ]


async def test_approval_sent_from_the_web_ui_lets_the_change_proceed(
    ui_server: UiServer,
    worker: None,
    task_queue: str,
    page: Page,
    store: SqliteAuditStore,
    reset: Ledger,
    tmp_path: Path,
) -> None:
    """Found by AwaitingApprovalFrom in the list, approved in the Update dialog: it completes."""
    handle, status = await _start_awaiting_approval(ui_server, task_queue)
    assert status.report is not None
    query = "AwaitingApprovalFrom = 'sre-leads'"
    async with _screenshot_on_failure(page, tmp_path / "failure.png"):
        await _listed(ui_server, query, handle.id)  # visibility is eventually consistent
        await page.goto(f"{ui_server.url}/namespaces/default/workflows?query={quote(query)}")
        await page.get_by_role("link", name=handle.id, exact=True).first.click()
        # The operator reads the report hash where the change shows it: its current details,
        # which the UI renders as markdown in an iframe titled "output".
        await page.get_by_role("tab", name="User Metadata").click()
        details = page.get_by_title("output").content_frame
        await expect(details.get_by_role("heading", level=2)).to_have_text(
            f"{handle.id}: AwaitingApproval"
        )
        hint = f"blocked by switch; awaiting approval of report {status.report.report_hash}"
        await expect(details.get_by_text(hint, exact=True)).to_be_visible()

        approval = {
            "guardrails": ["switch"],
            "approver": "bob",
            "reason": "hotfix for incident 42",
            "report_hash": status.report.report_hash,
            "expires_in": "1h",
        }
        dialog = await _send(page, "Update", "approve", approval)
        await _toast(page, "Update successful")
        await expect(dialog).to_be_hidden()

    result = await _result(handle)
    assert result.outcome is Outcome.COMPLETED
    assert sorted(reset.applied) == ["t1", "t2"]
    records = people_actions(store, handle.id)
    assert [(r.action, r.actor, r.guardrail, r.reason, r.report_hash) for r in records] == [
        (
            AuditAction.APPROVAL,
            "bob",
            "switch",
            "hotfix for incident 42",
            status.report.report_hash,
        )
    ]


async def test_signals_from_the_web_ui_record_a_refusal_and_recheck(
    ui_server: UiServer,
    worker: None,
    task_queue: str,
    page: Page,
    store: SqliteAuditStore,
    reset: Ledger,
    tmp_path: Path,
) -> None:
    """approve_signal's refusal lands in status and audit; a recheck signal re-gates to completion."""
    handle, status = await _start_awaiting_approval(ui_server, task_queue)
    assert status.report is not None
    async with _screenshot_on_failure(page, tmp_path / "failure.png"):
        await _open_change(page, ui_server, handle.id)
        own = {
            "guardrails": ["switch"],
            "approver": "alice",
            "reason": "I am sure",
            "report_hash": status.report.report_hash,
        }
        dialog = await _send(page, "Signal", "approve_signal", own)
        await _toast(page, "Workflow signaled.")
        await expect(dialog).to_be_hidden()
        for _ in range(200):  # a signal has no answer: poll until it was handled
            status = await handle.query("status", result_type=ChangeStatus)
            if status.rejected_approvals:
                break
            await asyncio.sleep(0.05)
        assert [(r.approver, r.why) for r in status.rejected_approvals] == [
            ("alice", "four eyes: alice requested this change and cannot approve switch")
        ]

        # UI 2.54.1 keys its notices by one id: a second signal while the first notice shows
        # leaves the dialog spinning (Svelte each_key_duplicate), although the signal was sent.
        await page.get_by_role("button", name="Close").click()  # close the notice
        await expect(page.get_by_text("Workflow signaled.", exact=True)).to_have_count(0)

        Switch.outcome = "pass"  # the cause is fixed
        fixed = {"requested_by": "bob", "reason": "switch turned on"}
        dialog = await _send(page, "Signal", "recheck", fixed)
        await _toast(page, "Workflow signaled.")
        await expect(dialog).to_be_hidden()

    result = await _result(handle)
    assert result.outcome is Outcome.COMPLETED
    records = people_actions(store, handle.id)
    assert [(r.action, r.actor) for r in records] == [
        (AuditAction.APPROVAL_REJECTED, "alice"),
        (AuditAction.RECHECK, "bob"),
    ]


PANEL_WIDTH = 1280


async def _fits_horizontally(page: Page, what: Locator, name: str) -> None:
    """``what`` is visible and ends inside the 1280 px window (no horizontal scrolling needed)."""
    await expect(what).to_be_visible()
    box = await what.bounding_box()
    assert box is not None, f"{name} has no box"
    assert box["x"] >= 0 and box["x"] + box["width"] <= PANEL_WIDTH, f"{name} runs off: {box}"


async def _no_horizontal_scroll(frame: Any, name: str) -> None:
    overflow = await frame.locator("html").evaluate(
        "e => [e.scrollWidth, e.clientWidth, document.body.scrollWidth]"
    )
    assert overflow[0] <= overflow[1] and overflow[2] <= overflow[1], f"{name} scrolls: {overflow}"


async def test_the_page_explains_itself_at_1280_px(
    ui_server: UiServer, worker: None, task_queue: str, page: Page, tmp_path: Path
) -> None:
    """Summary, check names in the timeline, each block's remedy and the approve JSON all fit."""
    import changeguard

    approvable = {"approvers": ["sre-leads"]}
    req = ChangeRequest(
        change_id=f"ui-{uuid.uuid4().hex[:8]}",
        kind="recording",
        summary="Roll out 1.4.2 to the web tier",
        requester="alice",
        team="web",
        environment="prod",
        targets=[{"id": "web-01"}, {"id": "web-02"}, {"id": "web-03"}],  # type: ignore[list-item]
        rollout={"waves": ["100%"], "bake": "0s"},  # type: ignore[arg-type]
        policy={
            "guardrails": [
                {"use": "switch", "opt_out": approvable},
                {
                    "use": "fake-timing",
                    "opt_out": approvable,
                    "params": {
                        "outcome": "fail",
                        "reason": "the freeze calendar says no deploys today " * 8,
                    },
                },
                {"use": "fake-health"},
            ]
        },
    )
    client = changeguard.Client(
        ui_server.env.client, changeguard.Settings.from_env(task_queue=task_queue)
    )
    await client.start(req)
    handle = ui_server.env.client.get_workflow_handle(req.change_id or "", result_type=ChangeResult)
    status = await until_phase(handle, Phase.AWAITING_APPROVAL)
    assert status.report is not None
    await page.set_viewport_size({"width": PANEL_WIDTH, "height": 1000})
    async with _screenshot_on_failure(page, tmp_path / "failure.png"):
        await _open_change(page, ui_server, handle.id)
        await _no_horizontal_scroll(page, "the change's page")
        for name in ("validate recording params", "gate 1: every rule"):
            await _fits_horizontally(page, page.get_by_text(name).first, f"timeline row {name!r}")

        await page.get_by_role("tab", name="User Metadata").click()
        # The UI renders the summary, the static details and the current details as markdown,
        # each in an iframe titled "output", in that order.
        outputs = page.get_by_title("output")
        await expect(outputs).to_have_count(3)
        summary = (
            "recording: Roll out 1.4.2 to the web tier · 3 targets · prod · team web · by alice"
        )
        shown = outputs.nth(0).content_frame.get_by_text(summary, exact=True)
        await expect(shown).to_be_visible()
        await expect(outputs.nth(1).content_frame.get_by_text("web-03", exact=True)).to_be_visible()
        for n in range(3):
            frame = await outputs.nth(n).bounding_box()
            assert frame is not None and frame["x"] + frame["width"] <= PANEL_WIDTH, (n, frame)
            await _no_horizontal_scroll(outputs.nth(n).content_frame, f"user metadata panel {n}")
        details = outputs.nth(2).content_frame
        await expect(details.get_by_role("heading", level=2)).to_have_text(
            f"{handle.id}: AwaitingApproval"
        )
        frame = await outputs.nth(2).bounding_box()
        assert frame is not None
        for c in status.report.failures:
            block = details.get_by_role("heading", level=4, name=f"FAIL · {c.rule_id}")
            await expect(block).to_be_visible()
            remedy = details.get_by_text(f"to pass: {c.remedy}", exact=True)
            await expect(remedy).to_be_visible()
            box = await remedy.bounding_box()  # in page coordinates: inside the panel
            right = frame["x"] + frame["width"]
            assert box is not None and box["x"] + box["width"] <= right, (c.rule_id, box, frame)
        pasted = json.loads(await details.locator("pre code").inner_text())
        assert pasted == {
            "guardrails": ["fake-timing", "switch"],
            "approver": "<your name>",
            "reason": "<why it is safe to go ahead>",
            "report_hash": status.report.report_hash,
        }

        gate = (
            f"{ui_server.url}/namespaces/default/workflows/{quote(f'{handle.id}/gate-1', safe='')}"
        )
        await page.goto(gate)
        await expect(page.get_by_role("button", name="More Actions")).to_be_visible()
        await _no_horizontal_scroll(page, "the gate's page")
        for rule in ("switch", "fake-timing", "fake-health"):
            await _fits_horizontally(
                page, page.get_by_text(f"check {rule}").first, f"timeline row check {rule}"
            )
    await handle.execute_update(
        "abort", {"operator": "bob", "reason": "test over"}, result_type=dict
    )
    assert (await _result(handle)).outcome is Outcome.ABORTED
