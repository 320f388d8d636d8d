"""A cluster with the dashboard and /metrics on, for the observability tests."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from pyq_cluster_harness import Harness
from redis_server import free_port

from pyqueue.cluster.config import dashboard_token


class Observed:
    """A coordinator started with --http and --metrics, and an HTTP client for them."""

    def __init__(self, harness: Harness, *extra: str) -> None:
        self.harness = harness
        self.http_port, self.metrics_port = free_port(), free_port()
        harness.coordinator(
            None,
            True,
            "--http",
            f"127.0.0.1:{self.http_port}",
            "--metrics",
            f"127.0.0.1:{self.metrics_port}",
            *extra,
        )
        self.base = f"http://127.0.0.1:{self.http_port}"
        self.token = dashboard_token(harness.key.encode())

    def request(
        self,
        path: str,
        body: Any = None,
        *,
        token: str | None = "default",
        csrf: str | None = "default",
        raw: bytes | None = None,
        content_type: str = "application/json",
        base: str | None = None,
    ) -> tuple[int, Any]:
        """(status, decoded JSON or text) of one request; POST when a body is given."""
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {self.token if token == 'default' else token}"
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        if data is not None:
            headers["Content-Type"] = content_type
            if csrf is not None:
                headers["X-CSRF-Token"] = self.csrf() if csrf == "default" else csrf
        req = urllib.request.Request((base or self.base) + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, text = resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read().decode()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def csrf(self) -> str:
        status, body = self.request("/api/session", csrf=None)
        assert status == 200, body
        return str(body["csrf"])

    def metrics_text(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as resp:
            return str(resp.read().decode())
