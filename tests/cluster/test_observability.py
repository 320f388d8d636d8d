"""Metrics, the dashboard's HTTP API and status --json, against real processes."""

from __future__ import annotations

import json
import operator
import re
from importlib import resources
from pathlib import Path

import jsonschema
import pyq_cluster_tasks as T
import pytest
from observe_helpers import Observed
from prometheus_client.parser import text_string_to_metric_families
from pyq_cluster_harness import Harness, wait_until
from redis_server import free_port

from pyqueue.cluster.web import MAX_BODY, error_type

pytestmark = pytest.mark.slow


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_count_what_was_submitted_and_finished_and_carry_no_task_id(harness: Harness):
    obs = Observed(harness)
    harness.node(2, None, "node", True, "--queues", "default,other")
    client = harness.client()
    harness.wait_nodes(client, 1)
    ok = [client.submit_call(operator.add, (i, 1), {}) for i in range(40)]
    bad = [client.submit_call(T.boom, ("no",), {}) for _ in range(5)]
    other = [client.submit_call(operator.neg, (i,), {}, queue="other") for i in range(7)]
    for t in ok + other:
        t.result(timeout=60)
    for t in bad:
        with pytest.raises(ValueError):
            t.result(timeout=60)
    text = obs.metrics_text()
    got = _samples(text)
    assert got[("pyqueue_tasks_submitted_total", (("queue", "default"),))] == 45
    assert got[("pyqueue_tasks_submitted_total", (("queue", "other"),))] == 7
    key = ("pyqueue_tasks_finished_total", (("queue", "default"), ("state", "succeeded")))
    assert got[key] == 40
    key = ("pyqueue_tasks_finished_total", (("queue", "default"), ("state", "failed")))
    assert got[key] == 5
    depth = ("pyqueue_queue_depth", (("queue", "other"), ("state", "succeeded")))
    assert got[depth] == 7
    # every completion reported its run time, every lease its wait
    assert got[("pyqueue_task_run_seconds_count", (("queue", "default"),))] == 45
    assert got[("pyqueue_task_wait_seconds_count", (("queue", "other"),))] == 7
    assert got[("pyqueue_nodes", (("state", "serving"),))] == 1
    assert got[("pyqueue_store_commit_seconds_count", ())] > 0
    ids = {t.id for t in ok + bad + other}
    labels = {v for (_, lab) in got for _, v in lab}
    assert not ids & labels, "a task id leaked into a label"
    assert not any(i in text for i in ids)


def test_http_refuses_bad_requests_with_clear_4xx_and_keeps_serving(harness: Harness):
    obs = Observed(harness)
    assert obs.request("/healthz", token=None) == (200, {"ok": True})
    assert obs.request("/readyz", token=None)[0] == 200
    # reading needs the token
    assert obs.request("/api/overview", token=None)[0] == 401
    assert obs.request("/api/overview", token="wrong")[0] == 401
    assert obs.request("/api/tasks/x", token="wrong")[0] == 401
    # actions need CSRF too, even with the token
    status, body = obs.request("/api/dead/requeue", {"ids": ["a"]}, csrf=None)
    assert status == 403 and "CSRF" in body["error"]
    assert obs.request("/api/dead/requeue", {"ids": ["a"]}, csrf="nope")[0] == 403
    # malformed, oversized, wrong shapes
    status, body = obs.request("/api/dead/requeue", raw=b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]
    assert obs.request("/api/dead/requeue", raw=b"[1]")[0] == 400
    assert obs.request("/api/dead/requeue", raw=b"{}", content_type="text/plain")[0] == 400
    assert obs.request("/api/dead/requeue", {"ids": []})[0] == 400
    assert obs.request("/api/dead/requeue", {"ids": [1, 2]})[0] == 400
    assert obs.request("/api/dead/requeue", {"ids": ["x" * 600]})[0] == 400
    big = json.dumps({"ids": ["a" * 500] * (MAX_BODY // 400)}).encode()
    assert obs.request("/api/dead/requeue", raw=big)[0] == 413
    assert obs.request("/api/queues/default", {"rate_limit": -1})[0] == 400
    assert obs.request("/api/queues/default", {"paused": "yes"})[0] == 400
    assert obs.request("/api/queues/bad%20name!", {"paused": True})[0] == 400
    assert obs.request("/api/dead?limit=0")[0] == 400
    assert obs.request("/api/dead?limit=x")[0] == 400
    # unknown ids and paths
    status, body = obs.request("/api/tasks/never-submitted")
    assert status == 404 and "never-submitted" in body["error"]
    assert obs.request("/api/schedules/nope/pause", {})[0] == 404
    assert obs.request("/api/schedules/nope/explode", {})[0] == 404
    assert obs.request("/api/nothing-here")[0] == 404
    for path in ("/static/../web.py", "/static/..%2f..%2fweb.py", "/static/%2e%2e/cli.py"):
        assert obs.request(path, token=None)[0] == 404, path
    assert obs.request("/static/app.js", token=None)[0] == 200
    # still serving, and nothing counted against the store
    status, st = obs.request("/api/overview")
    assert status == 200 and st["internal_errors"] == 0


def test_http_actions_requeue_and_delete_dead_tasks_and_configure_queues(
    harness: Harness, tmp_path: Path
):
    obs = Observed(harness, "--max-lost", "1")
    harness.node()
    client = harness.client()
    harness.wait_nodes(client, 1)
    cure = tmp_path / "cured"
    doomed = [client.submit_call(T.die_unless, (str(cure),), {}) for _ in range(2)]
    wait_until(lambda: obs.request("/api/overview")[1]["dead"] == 2, 60, "two dead tasks")
    status, dead = obs.request("/api/dead")
    assert status == 200 and {t["id"] for t in dead["tasks"]} == {t.id for t in doomed}
    assert dead["error_types"] == {"lost": 2}
    assert obs.request("/api/dead?error_type=ValueError")[1]["tasks"] == []
    status, one = obs.request(f"/api/tasks/{doomed[0].id}")
    assert status == 200 and one["state"] == "dead" and one["lost"] == 1
    assert one["created"] <= one["started"] <= one["ended"]
    cure.write_text("")
    assert obs.request("/api/dead/requeue", {"ids": [doomed[0].id, "nope"]}) == (
        200,
        {"requeued": [True, False]},
    )
    # the old handle saw it die; a new one waits for the rerun
    wait_until(
        lambda: obs.request(f"/api/tasks/{doomed[0].id}")[1]["state"] == "succeeded",
        60,
        "the requeued task to succeed",
    )
    assert client.wait_for(doomed[0].id).result(timeout=60) == "recovered"
    assert obs.request("/api/dead/delete", {"ids": [doomed[1].id]}) == (200, {"deleted": [True]})
    assert obs.request(f"/api/tasks/{doomed[1].id}")[0] == 404
    status, q = obs.request("/api/queues/default", {"rate_limit": 5, "paused": True})
    assert status == 200 and (q["rate_limit"], q["paused"]) == (5.0, True)
    status, q = obs.request("/api/queues/default", {"paused": False})
    assert (q["rate_limit"], q["paused"]) == (5.0, False)  # a field left out is kept


def test_status_json_matches_its_schema_and_the_http_overview(harness: Harness):
    obs = Observed(harness)
    harness.node()
    client = harness.client()
    harness.wait_nodes(client, 1)
    client.submit_call(operator.add, (1, 2), {}).result(timeout=60)
    client.submit_call(operator.add, (1, 2), {}, queue="q1")  # no node serves it: it waits
    schema = json.loads(
        resources.files("pyqueue.cluster").joinpath("webui", "status.schema.json").read_text()
    )
    out = harness.cli("status", "--json")
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    jsonschema.validate(printed, schema)
    status, overview = obs.request("/api/overview")
    jsonschema.validate(overview, schema)
    assert set(printed) == set(overview)
    assert [q["name"] for q in printed["queues"]] == ["default", "q1"]
    assert printed["totals"] == {"submitted": 2, "finished": 1, "failed": 0, "dead": 0}
    assert printed["queues"][1]["oldest_pending_s"] is not None
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**printed, "nodes": [{"id": 1}]}, schema)


def test_status_watch_draws_queues_and_nodes(harness: Harness):
    Observed(harness)
    harness.node(name="watched")
    client = harness.client()
    harness.wait_nodes(client, 1)
    client.submit_call(operator.add, (1, 2), {}).result(timeout=60)
    client.submit_call(operator.add, (1, 2), {}, queue="watchq")  # waits: nobody serves it
    out = harness.cli("status", "--watch", "--count", "2")
    assert out.returncode == 0, out.stderr
    assert "watchq" in out.stdout and "watched" in out.stdout
    assert re.search(r"finished \d", out.stdout)
    bad = harness.cli("status", "--count", "2")
    assert bad.returncode == 2 and "--count N needs --watch" in bad.stderr


def test_every_route_is_in_the_openapi_description():
    from aiohttp import web as aioweb

    from pyqueue.cluster.coordinator import CoordinatorCore
    from pyqueue.cluster.web import WebServer

    app = WebServer(CoordinatorCore(b"k" * 32), "t")._dashboard_app()
    routes = set()
    for r in app.router.routes():
        info = r.resource.get_info() if r.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if r.method != "HEAD":
            routes.add((r.method.lower(), path))
    spec = json.loads(
        resources.files("pyqueue.cluster").joinpath("webui", "openapi.json").read_text()
    )
    described = {(m, p) for p, ops in spec["paths"].items() for m in ops}
    assert routes == described
    assert isinstance(app, aioweb.Application)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        (None, "none"),
        ("Traceback (most recent call last):\n  ...\nValueError: no", "ValueError"),
        ("Traceback:\nmypkg.errors.Boom: x", "Boom"),
        ("its node died under it 4 times", "lost"),
        ("hard cap of 20 attempts reached", "attempt-cap"),
        ("cancelled", "cancelled"),
        ("!!", "other"),
    ],
)
def test_error_type_names_the_kind_of_error(text, kind):
    assert error_type(text) == kind


def test_local_cluster_serves_the_dashboard_and_metrics_it_is_asked_for():
    import urllib.error
    import urllib.request

    from pyqueue.cluster import LocalCluster
    from pyqueue.cluster.config import dashboard_token

    http, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    with LocalCluster(nodes=1, workers=1, fast=True, http=http, metrics=metrics) as cluster:
        assert cluster.client.submit(operator.add, 2, 3).result(timeout=30) == 5
        with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10) as r:
            got = _samples(r.read().decode())
        assert got[("pyqueue_tasks_submitted_total", (("queue", "default"),))] == 1
        with urllib.request.urlopen(f"http://{http}/readyz", timeout=10) as r:
            assert r.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://{http}/api/overview", timeout=10)
        assert refused.value.code == 401
        refused.value.close()
        token = dashboard_token(cluster.key.encode())
        req = urllib.request.Request(
            f"http://{http}/api/overview", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert json.load(r)["tasks"]["succeeded"] == 1
