"""The dead-letter console in a real headless browser (issue 7, acceptance 3).

Debian's chromium (``/usr/bin/chromium``, installed by ``make browser``, which ``make
test`` runs) driven by Playwright through ``executable_path``: Playwright's own browser
download is never used. Launch flags are the ones known to work on these machines (no
sandbox as root; no background networking, which a closed network refuses).

The test skips only when chromium is missing and cannot be installed here (``make
browser`` left a note saying why, or this user is not root with apt-get); a missing
chromium that ``make browser`` could install is a failure, not a skip. Under ``CI=true``
every skip is a failure too (``tests/conftest.py``): CI must have chromium.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.support.procs import ServiceFactory
from tests.support.stack import Stack, post
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 30_000
"""How long the page may take to show a change (ms): the console polls every 3 s."""


def chromium() -> str:
    """Path of Debian's chromium; skip (or fail) with the reason when there is none."""
    found = shutil.which("chromium") or (CHROMIUM if os.access(CHROMIUM, os.X_OK) else None)
    if found:
        return found
    note = REPO / ".venv" / ".chromium-unavailable"
    if note.exists():
        pytest.skip(f"Debian's chromium cannot be installed here: {note.read_text().strip()}")
    if os.geteuid() == 0 and shutil.which("apt-get"):
        pytest.fail("chromium is missing but can be installed here: run `make browser`")
    pytest.skip("Debian's chromium is missing and only root with apt-get can install it")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    path = chromium()
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=path, headless=True, args=FLAGS)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
async def stack(service_env: dict[str, str], services: ServiceFactory) -> AsyncIterator[Stack]:
    env = service_env | {
        "WORKER_HANDLERS": "taskflow_worker.builtin,taskflow_worker.testing",
        "WORKER_CONCURRENCY": "4",
    }
    s = await Stack(services, env).start()
    try:
        yield s
    finally:
        await s.close()


async def open_console(browser: Browser, stack: Stack) -> tuple[Page, list[str]]:
    """Open the console; also return the list its script errors are collected in."""
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    await page.goto(f"http://127.0.0.1:{stack.env['DLQ_HTTP_PORT']}/console")
    page.set_default_timeout(WAIT_MS)
    return page, errors


async def test_console_filters_shows_a_detail_and_replays_until_the_task_completes(
    browser: Browser, stack: Stack
) -> None:
    page, errors = await open_console(browser, stack)
    rows = page.locator("#rows tr")
    await expect(page.locator("#empty")).to_be_visible(timeout=WAIT_MS)

    # Dead letters arrive while the page is open: it refreshes by itself.
    flaky = await stack.submit("test.flaky", {"fail_times": 1}, max_attempts=1)
    fails = [await stack.submit("fail", {"reason": f"no good {i}"}) for i in range(2)]
    await expect(rows).to_have_count(3, timeout=WAIT_MS)
    # Newest first, as the API lists them.
    listed = [d["task_id"] for d in await stack.dead_letters()]
    assert [await r.get_attribute("data-id") for r in await rows.all()] == listed
    await expect(rows.filter(has_text="RuntimeError: flaky failure on attempt 1")).to_have_count(1)

    # Filter by type, then by error text.
    await page.fill("#f-type", "fail")
    await expect(rows).to_have_count(2)
    await page.fill("#f-type", "")
    await page.fill("#f-q", "no good 1")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-id", fails[1]["id"])
    await page.fill("#f-q", "")
    await page.fill("#f-type", "test.flaky")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-id", flaky["id"])

    # The detail: payload and every attempt.
    await rows.first.click()
    await expect(page.locator("#detail-title")).to_have_text(f"Task {flaky['id']}")
    await expect(page.locator("#detail-status")).to_have_text("failed")
    await expect(page.locator("#detail-payload")).to_contain_text('"fail_times": 1')
    attempts = page.locator("#detail-executions tbody tr")
    await expect(attempts).to_have_count(1)
    await expect(attempts.first).to_contain_text("flaky failure on attempt 1")

    # Replay it from the page; the page follows the task until it completes.
    await page.click("#detail-replay")
    await expect(page.locator("#message")).to_contain_text(f"Replayed task {flaky['id']}")
    await expect(page.locator("#detail-status")).to_have_text("completed", timeout=WAIT_MS)
    await expect(attempts).to_have_count(2)
    await expect(attempts.nth(1)).to_contain_text("succeeded")
    await expect(rows).to_have_count(0)  # no longer open
    task = await stack.get(flaky["id"])
    assert task["status"] == "completed"
    assert task["result"] == {"attempt": 2}
    assert [e["status"] for e in await stack.executions(flaky["id"])] == ["failed", "succeeded"]
    assert errors == []


async def test_console_discards_and_replays_all_matching_after_showing_the_count(
    browser: Browser, stack: Stack
) -> None:
    fails = [await stack.submit("fail", {"reason": f"no good {i}"}) for i in range(3)]

    async def recorded() -> bool:
        return len(await stack.dead_letters(type="fail")) == 3

    await wait_for(recorded, timeout=30, what="3 dead letters")
    page, errors = await open_console(browser, stack)
    rows = page.locator("#rows tr")
    await page.fill("#f-type", "fail")
    await expect(rows).to_have_count(3)

    # Discard one from its detail.
    await page.locator(f'#rows tr[data-id="{fails[0]["id"]}"]').click()
    await expect(page.locator("#detail-title")).to_have_text(f"Task {fails[0]['id']}")
    await page.click("#detail-discard")
    await expect(page.locator("#message")).to_have_text("Discarded 1 dead letter(s).")
    await expect(rows).to_have_count(2)
    await page.click("#detail-close")

    # Replay all matching: the count is shown first; cancelling changes nothing.
    await page.click("#replay-all")
    dialog = page.locator("#confirm")
    await expect(dialog).to_be_visible()
    await expect(page.locator("#confirm-text")).to_contain_text("Replay 2 task(s)")
    await expect(page.locator("#confirm-text")).to_contain_text('type = "fail"')
    await page.click("#confirm-cancel")
    await expect(page.locator("#message")).to_have_text("Replay cancelled.")
    await expect(rows).to_have_count(2)

    await page.click("#replay-all")
    await page.click("#confirm-ok")
    await expect(page.locator("#message")).to_have_text("Replayed 2 task(s).")

    # Both ran again (attempt 2) and failed again; the discarded one was left alone.
    async def ran_again() -> bool:
        tasks = [await stack.get(t["id"]) for t in fails[1:]]
        return all(t["status"] == "failed" and t["attempts"] == 2 for t in tasks)

    await wait_for(ran_again, timeout=30, what="replayed tasks to fail again")
    assert (await stack.get(fails[0]["id"]))["attempts"] == 1
    # Their new dead letters show up as open again, by themselves.
    await expect(rows).to_have_count(2, timeout=WAIT_MS)
    assert errors == []


async def test_console_lists_schedules_with_their_last_run(browser: Browser, stack: Stack) -> None:
    """Issue 15: schedules are listed in the console (read-only), with next/last fire."""
    page, errors = await open_console(browser, stack)
    await expect(page.locator("#schedules-empty")).to_be_visible()
    body = {"name": "nightly.report", "cron": "30 2 * * *", "timezone": "Europe/Berlin"}
    resp = await post(stack, "/schedules", json={**body, "task": {"type": "demo"}})
    assert resp.status_code == 201, resp.text
    resp = await post(
        stack,
        "/schedules",
        json={"name": "paused.one", "every": "30s", "paused": True, "task": {"type": "demo"}},
    )
    assert resp.status_code == 201, resp.text
    run = await post(stack, "/schedules/nightly.report/run")
    assert run.status_code == 201, run.text
    await stack.wait_status(run.json()["task"]["id"], {"completed"})

    rows = page.locator("#schedule-rows tr")
    await expect(rows).to_have_count(2, timeout=WAIT_MS)  # by name
    assert [await r.get_attribute("data-name") for r in await rows.all()] == [
        "nightly.report",
        "paused.one",
    ]
    nightly = page.locator('#schedule-rows tr[data-name="nightly.report"] td')
    await expect(nightly.nth(1)).to_have_text("demo")
    await expect(nightly.nth(2)).to_have_text("30 2 * * *")
    await expect(nightly.nth(3)).to_have_text("Europe/Berlin")
    await expect(nightly.nth(4)).to_have_text("active")
    await expect(nightly.nth(5)).to_contain_text("in ")
    await expect(nightly.nth(6)).to_contain_text("ago")
    await expect(nightly.nth(7)).to_have_text("completed", timeout=WAIT_MS)
    paused = page.locator('#schedule-rows tr[data-name="paused.one"] td')
    await expect(paused.nth(2)).to_have_text("every 30s")
    await expect(paused.nth(4)).to_have_text("paused")
    await expect(paused.nth(7)).to_have_text("—")
    await expect(page.locator("#schedules-empty")).to_be_hidden()
    assert errors == []
