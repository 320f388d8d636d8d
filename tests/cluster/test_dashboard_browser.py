"""The dashboard in a real browser: Debian's chromium, driven by playwright.

Screenshots go to ``$PYQUEUE_ARTEFACTS`` (default: ``artefacts/`` in the
working directory; not committed).  Without chromium the test skips on a
developer machine (``apt-get install chromium``) and fails under CI, which
installs it.
"""

from __future__ import annotations

import operator
import os
import shutil
from pathlib import Path

import pyq_cluster_tasks as T
import pytest
from observe_helpers import Observed
from pyq_cluster_harness import Harness, wait_until

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def browser():
    if not shutil.which(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: CI must install Debian's chromium")
        pytest.skip(f"needs {CHROMIUM}: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def shots() -> Path:
    out = Path(os.environ.get("PYQUEUE_ARTEFACTS", "artefacts")) / "dashboard"
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_dashboard_views_a_task_and_requeues_a_dead_one_by_clicking(
    harness: Harness, browser, shots: Path, tmp_path: Path
):
    obs = Observed(harness, "--max-lost", "1")
    harness.node()
    client = harness.client()
    harness.wait_nodes(client, 1)
    good = client.submit_call(operator.add, (2, 3), {})
    assert good.result(timeout=60) == 5
    cure = tmp_path / "cured"
    doomed = client.submit_call(T.die_unless, (str(cure),), {})
    wait_until(lambda: obs.request("/api/overview")[1]["dead"] == 1, 60, "the task to die")

    page = browser.new_page()
    page.goto(obs.base + "/")
    # no token yet: the login form, and nothing of the cluster shown
    page.wait_for_selector("#login:not([hidden])")
    page.fill("#token", "wrong")
    page.click("#login-form button")
    page.wait_for_selector("#login-error:has-text('wrong token')")
    page.fill("#token", obs.token)
    page.click("#login-form button")
    page.wait_for_selector("#queues-table tr[data-queue='default']")
    page.wait_for_selector("#nodes-table td:has-text('serving')")
    page.screenshot(path=str(shots / "1-overview.png"), full_page=True)

    page.fill("#find-id", good.id)
    page.click("#find-task button")
    page.wait_for_selector("#task-id")
    assert page.inner_text("#task-id") == good.id
    assert page.inner_text("td[data-field='state']") == "succeeded"
    page.screenshot(path=str(shots / "2-task.png"), full_page=True)

    page.goto(obs.base + "/#/dead")
    row = page.wait_for_selector(f"#dead-table tr[data-task='{doomed.id}']")
    assert "lost" in row.inner_text()
    page.screenshot(path=str(shots / "3-dead-letters.png"), full_page=True)
    cure.write_text("")
    row.query_selector("button.requeue").click()
    page.wait_for_selector("#no-dead")
    wait_until(
        lambda: obs.request(f"/api/tasks/{doomed.id}")[1]["state"] == "succeeded",
        60,
        "the requeued task to succeed",
    )
    assert client.wait_for(doomed.id).result(timeout=60) == "recovered"

    page.goto(obs.base + f"/#/task/{doomed.id}")
    page.wait_for_selector("td[data-field='state']:has-text('succeeded')")
    page.screenshot(path=str(shots / "4-requeued-task.png"), full_page=True)
    page.goto(obs.base + "/#/schedules")
    page.wait_for_selector("#queue-settings tr[data-queue='default']")
    page.screenshot(path=str(shots / "5-schedules-and-queues.png"), full_page=True)

    # another browser with no session is refused the data, and cannot act
    stranger = browser.new_context()
    resp = stranger.request.get(obs.base + "/api/overview")
    assert resp.status == 401
    resp = stranger.request.post(obs.base + "/api/dead/requeue", data={"ids": [doomed.id]})
    assert resp.status == 401
    stranger.close()
