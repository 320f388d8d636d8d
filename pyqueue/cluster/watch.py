"""``pyqueue status --watch``: a live terminal view of a cluster, made with rich.

One STATUS request a second; rates are the differences of the coordinator's
totals between two answers (so they are exact over each interval, whatever
the refresh jitter).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

__all__ = ["render", "watch"]

_STATES = ("scheduled", "pending", "leased", "succeeded", "failed", "dead", "cancelled")


def _rates(st: Mapping[str, Any], prev: Mapping[str, Any] | None) -> dict[str, float]:
    if prev is None:
        return {}
    dt = st["time"] - prev["time"]
    if dt <= 0:
        return {}
    now, then = st["totals"], prev["totals"]
    return {k: max(0.0, (now[k] - then[k]) / dt) for k in now if k in then}


def render(st: Mapping[str, Any], prev: Mapping[str, Any] | None = None) -> Group:
    """The view of one status answer (``prev``: the one before, for rates)."""
    rates = _rates(st, prev)
    rate_text = (
        "   ".join(f"{k} {v:,.1f}/s" for k, v in rates.items()) if rates else "rates: next refresh"
    )
    head = Text.assemble(
        (f"nodes {len(st['nodes'])}", "bold"),
        f"   waiting {st['queue_depth']}   in flight {st['in_flight']}   dead {st['dead']}   ",
        (rate_text, "cyan"),
    )
    queues = Table(title="queues", title_justify="left", expand=False)
    # names are never cut short: the numbers give way first
    names = [q["name"] for q in st.get("queues", [])]
    queues.add_column("queue", no_wrap=True, min_width=max(map(len, names), default=5))
    for s in _STATES:
        queues.add_column(s, justify="right")
    queues.add_column("oldest pending", justify="right")
    queues.add_column("limit")
    for q in st.get("queues", []):
        age = q["oldest_pending_s"]
        queues.add_row(
            q["name"] + (" (paused)" if q["paused"] else ""),
            *(str(q["tasks"].get(s, 0)) for s in _STATES),
            "-" if age is None else f"{age:.1f} s",
            "-" if q["rate_limit"] is None else f"{q['rate_limit']:g}/s",
        )
    nodes = Table(title="nodes", title_justify="left", expand=False)
    ids = [n["id"] for n in st["nodes"]]
    nodes.add_column("node", no_wrap=True, min_width=max(map(len, ids), default=4))
    for col in ("address", "state", "slots", "in flight", "heard"):
        nodes.add_column(col, justify="right" if col in ("slots", "in flight", "heard") else "left")
    for n in st["nodes"]:
        nodes.add_row(
            n["id"],
            n["address"],
            n.get("state", "?"),
            str(n["capacity"]),
            str(n["outstanding"]),
            f"{n['silent_s']:.1f} s ago",
        )
    parts: list[Any] = [head, queues, nodes]
    if st.get("schedules"):
        sched = Table(title="schedules", title_justify="left", expand=False)
        for col in ("id", "timing", "queue", "next fire"):
            sched.add_column(col)
        for s in st["schedules"]:
            nxt = s["next_fire"]
            sched.add_row(
                s["id"],
                s["cron"] or f"every {s['every']:g} s",
                s["queue"],
                "paused"
                if s["paused"] or nxt is None
                else f"in {max(0.0, nxt - st['time']):.1f} s",
            )
        parts.append(sched)
    return Group(*parts)


def watch(
    fetch: Callable[[], Mapping[str, Any]],
    *,
    interval: float = 1.0,
    count: int | None = None,
    console: Console | None = None,
) -> int:
    """Refresh the view every ``interval`` seconds until Ctrl-C (or ``count`` refreshes)."""
    prev: Mapping[str, Any] | None = None
    shown = 0
    with Live(console=console, auto_refresh=False) as live:
        try:
            while count is None or shown < count:
                started = time.monotonic()
                try:
                    st = fetch()
                except Exception as exc:  # the coordinator may come back: keep watching
                    live.update(Text(f"no answer from the coordinator: {exc}", style="red"))
                else:
                    live.update(render(st, prev))
                    prev = st
                live.refresh()
                shown += 1
                if count is None or shown < count:
                    time.sleep(max(0.0, interval - (time.monotonic() - started)))
        except KeyboardInterrupt:
            pass
    return 0
