"""Turn the samples of ``benchmarks.compare`` into Markdown tables and PNG plots.

Every figure is the median over repetitions; the spread is the min-max range of
the per-repetition values.  Ratios are taken between medians measured in the
same run, never against numbers from elsewhere.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass

from benchmarks.peers import OURS, PEERS
from benchmarks.workloads import TITLES


@dataclass(frozen=True)
class Headline:
    """How one workload is summarised.

    Attributes
    ----------
    metric : str
        Key in the sample's ``metrics``.
    unit : str
        Column label.
    higher_is_better : bool
    reference : str or None
        ``"serial"`` (ratio against the serial row), ``"best_peer"`` (against
        the best row that is neither serial nor pyqueue) or None (no ratio column).
    ratio_label : str
    versus : str or None
        A peer key whose ratio gets its own column in the detail table (the
        targets of issue 3 are stated against ThreadPoolExecutor).
    """

    metric: str
    unit: str
    higher_is_better: bool
    reference: str | None
    ratio_label: str = ""
    versus: str | None = None


HEADLINES = {
    "W1": Headline("tasks_per_s", "tasks/s", True, "best_peer", "x best peer", "threads"),
    "W2": Headline("tasks_per_s", "items/s", True, "serial", "x list comprehension"),
    "W3a": Headline("tasks_per_s", "tasks/s", True, "serial", "x serial"),
    "W3b": Headline("tasks_per_s", "tasks/s", True, "serial", "x serial"),
    "W4": Headline("tasks_per_s", "tasks/s", True, "serial", "x serial"),
    "W5": Headline("p50_us", "p50 µs", False, "best_peer", "x best peer (p50)", "threads"),
    "W6": Headline("x_ideal", "x ideal wall time", False, None),
}


def fmt(value, unit=""):
    """Format a number with 3 significant digits and a k/M suffix for large rates."""
    if value is None:
        return "-"
    if unit in ("tasks/s", "items/s") and value >= 1e3:
        for scale, suffix in ((1e6, "M"), (1e3, "k")):
            if value >= scale:
                return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}" if abs(value) < 1e4 else f"{value:,.0f}"


def collect(result):
    """Group samples by (peer, workload).

    Returns
    -------
    dict
        ``(peer, workload) -> {"values": [metrics, ...], "status": str, "reason": str}``;
        ``status`` is ``ok`` when at least one repetition succeeded.
    """
    cells = defaultdict(lambda: {"values": [], "status": None, "reason": ""})
    for s in result["samples"]:
        cell = cells[(s["peer"], s["workload"])]
        if s["status"] == "ok":
            cell["values"].append(s["metrics"])
            cell["status"] = "ok"
        elif cell["status"] != "ok":
            cell["status"], cell["reason"] = s["status"], s.get("reason", "")
    for peer, reason in result.get("unavailable", {}).items():
        for workload in result["meta"]["workloads"]:
            cells[(peer, workload)].update(status="unavailable", reason=reason)
    return cells


def _median(cell, metric):
    vals = [v[metric] for v in cell["values"] if v.get(metric) is not None]
    return statistics.median(vals) if vals else None


def _spread(cell, metric):
    vals = [v[metric] for v in cell["values"] if v.get(metric) is not None]
    return (min(vals), max(vals)) if vals else (None, None)


def _short(cell):
    if cell["status"] == "unavailable":
        return cell["reason"].split(" (")[0]
    return cell["status"] or "-"


def reference_value(cells, peers, workload):
    """Median headline metric of the reference row for ``workload`` (or None)."""
    head = HEADLINES[workload]
    if head.reference == "serial":
        return _median(cells[("serial", workload)], head.metric)
    if head.reference == "best_peer":
        meds = [
            _median(cells[(p, workload)], head.metric)
            for p in peers
            if p != "serial" and p not in OURS
        ]
        meds = [m for m in meds if m is not None]
        if meds:
            return max(meds) if head.higher_is_better else min(meds)
    return None


def fmt_ratio(r):
    """``1.23x``, with two significant digits below 0.1."""
    return "-" if r is None else (f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x")


def ratio(value, ref, higher_is_better):
    """Speed relative to the reference: above 1 means better than it."""
    if value is None or not ref:
        return None
    return value / ref if higher_is_better else ref / value


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def summary_table(cells, peers, workloads):
    """One row per peer, one column per workload: median (ratio)."""
    shown = [w for w in workloads if w in HEADLINES]
    header = ["peer"] + [
        f"{w} {HEADLINES[w].unit}"
        + (f" ({HEADLINES[w].ratio_label})" if HEADLINES[w].reference else "")
        for w in shown
    ]
    refs = {w: reference_value(cells, peers, w) for w in shown}
    rows = []
    for peer in peers:
        row = [f"**{PEERS[peer].name}**" if peer in OURS else PEERS[peer].name]
        for w in shown:
            head, cell = HEADLINES[w], cells[(peer, w)]
            med = _median(cell, head.metric)
            if med is None:
                row.append(_short(cell))
                continue
            r = ratio(med, refs[w], head.higher_is_better)
            row.append(fmt(med, head.unit) + (f" ({fmt_ratio(r)})" if r is not None else ""))
        rows.append(row)
    return _table(header, rows)


def workload_table(cells, peers, workload):
    """Detail table of one workload: median, spread, task count, ratio, notes."""
    head = HEADLINES[workload]
    ref = reference_value(cells, peers, workload)
    header = ["peer", f"median {head.unit}", "min", "max", "tasks"]
    if workload == "W5":
        header += ["p99 µs"]
    if workload == "W6":
        header += ["median s"]
    if head.reference:
        header.append(head.ratio_label)
    versus = _median(cells[(head.versus, workload)], head.metric) if head.versus else None
    if versus:
        header.append(f"x {PEERS[head.versus].name}")
    header.append("note")
    rows = []
    for peer in peers:
        cell = cells[(peer, workload)]
        med = _median(cell, head.metric)
        if med is None:
            rows.append(
                [PEERS[peer].name, "-", "-", "-", "-"]
                + ["-"] * (len(header) - 6)
                + [f"{cell['status']}: {cell['reason']}"]
            )
            continue
        lo, hi = _spread(cell, head.metric)
        row = [
            PEERS[peer].name,
            fmt(med, head.unit),
            fmt(lo, head.unit),
            fmt(hi, head.unit),
            f"{int(_median(cell, 'tasks')):,}",
        ]
        if workload == "W5":
            row.append(fmt(_median(cell, "p99_us")))
        if workload == "W6":
            row.append(fmt(_median(cell, "seconds")))
        if head.reference:
            r = ratio(med, ref, head.higher_is_better)
            row.append(fmt_ratio(r))
        if versus:
            row.append(fmt_ratio(ratio(med, versus, head.higher_is_better)))
        reps = len(cell["values"])
        row.append(
            f"{reps} reps" + (f"; some reps {cell['status']}" if cell["status"] != "ok" else "")
        )
        rows.append(row)
    return _table(header, rows)


def native_table(cells):
    """Workload N: numpy, the plain C loop and map_native on 1 and 2 workers."""
    serial, ours = cells[("serial", "N")], cells[("pyqueue", "N")]
    n = int(_median(ours, "items") or _median(serial, "items") or 0)
    m = int(_median(ours, "spin_items") or 0)
    c_add, c_spin = _median(ours, "c_loop_add_s"), _median(ours, "c_loop_spin_s")
    rows = []

    def add_row(label, cell, key, items, base, per_item_unit):
        secs = _median(cell, key)
        if secs is None:
            rows.append([label, "-", "-", "-", "-", cell["reason"] or _short(cell)])
            return
        lo, hi = _spread(cell, key)
        scale = 1e9 if per_item_unit == "ns" else 1e6
        per_item = secs / items * scale
        speed = f"{base / secs:.2f}x" if base else "-"
        over = (
            f"{(secs - base) / items * 1e9:+.2f} ns/item vs C loop"
            if base and key.endswith("1w_s")
            else ""
        )
        rows.append(
            [
                label,
                f"{per_item:.3g} {per_item_unit}/item",
                f"{lo / items * scale:.3g}-{hi / items * scale:.3g}",
                f"{secs * 1e3:.3g} ms",
                speed,
                over,
            ]
        )

    if n:
        add_row(f"add_one: numpy `a + 1` ({n:,} items)", serial, "numpy_add_s", n, c_add, "ns")
        add_row("add_one: C loop (`kernels.run_serial`)", ours, "c_loop_add_s", n, c_add, "ns")
        add_row("add_one: `map_native`, 1 worker", ours, "native_add_1w_s", n, c_add, "ns")
        add_row("add_one: `map_native`, 2 workers", ours, "native_add_2w_s", n, c_add, "ns")
    if m:
        add_row(f"spin ~1 µs: C loop ({m:,} items)", ours, "c_loop_spin_s", m, c_spin, "µs")
        add_row("spin ~1 µs: `map_native`, 1 worker", ours, "native_spin_1w_s", m, c_spin, "µs")
        add_row("spin ~1 µs: `map_native`, 2 workers", ours, "native_spin_2w_s", m, c_spin, "µs")
    if not rows:
        return f"N not measured: pyqueue {_short(ours)} ({ours['reason']})"
    return _table(
        ["variant", "median per item", "min-max", "median wall", "x C loop", "note"], rows
    )


def markdown(result):
    """Render the whole report as Markdown."""
    meta = result["meta"]
    cells = collect(result)
    peers, workloads = meta["peers"], meta["workloads"]
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v)
    missing = ", ".join(k for k, v in meta["versions"].items() if not v)
    out = [
        f"# pyqueue vs peers ({meta['mode']} run)",
        "",
        f"- command: `{meta['command']}` ({meta['reps']} repetitions, peers in rotating "
        f"and alternating order, each (peer, repetition) in its own process tree)",
        f"- date: {meta['started']}, total {meta.get('total_s', '?')} s, "
        f"commit {meta.get('commit')}",
        f"- machine: {meta['cpu_model']}, {meta['cpus_usable']} usable CPUs of "
        f"{meta['cpu_count']}, {meta['memory_gib']} GiB, {meta['platform']}, "
        f"{meta['implementation']} {meta['python']}",
        f"- load average at start / end: {meta['loadavg_start'][0]:.2f} / "
        f"{meta.get('loadavg_end', [float('nan')])[0]:.2f}",
        f"- versions: {versions}" + (f"; not installed: {missing}" if missing else ""),
        "",
        "Medians over repetitions; ratios in brackets are against the reference named in "
        "the column (best peer = best row that is neither serial nor pyqueue). "
        "Rates are comparable even where task counts differ (see the detail tables).",
        "",
        "## Summary",
        "",
        summary_table(cells, peers, workloads),
    ]
    for w in workloads:
        out += ["", f"## {w}: {TITLES[w]}", ""]
        out.append(native_table(cells) if w == "N" else workload_table(cells, peers, w))
    out += ["", "## How each peer runs the workloads", ""]
    out += [f"- {PEERS[p].name}: {PEERS[p].how}" for p in peers]
    return "\n".join(out) + "\n"


def plots(result, outdir, prefix):
    """Write ``<prefix>_throughput.png`` and ``<prefix>_latency_cdf.png`` (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter
    except ImportError:
        print("matplotlib not installed: no plots")
        return
    cells = collect(result)
    peers = result["meta"]["peers"]
    shown = [w for w in result["meta"]["workloads"] if w in HEADLINES]
    if shown:
        cols = min(3, len(shown))
        rows = -(-len(shown) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.2 * rows), squeeze=False)
        for ax, w in zip(axes.flat, shown):
            names, meds, errs, colors = [], [], [[], []], []
            for p in peers:
                cell = cells[(p, w)]
                med = _median(cell, "tasks_per_s")
                if med is None:
                    continue
                lo, hi = _spread(cell, "tasks_per_s")
                names.append(PEERS[p].name)
                meds.append(med)
                errs[0].append(med - lo)
                errs[1].append(hi - med)
                colors.append("tab:red" if p in OURS else "tab:blue")
            ax.barh(names, meds, xerr=errs, color=colors)
            ax.set_xscale("log")
            ax.set_xlim(left=min(meds) / 3, right=max(meds) * 3)
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.invert_yaxis()
            ax.set_title(f"{w}: {TITLES[w]}", fontsize=9)
            ax.set_xlabel("tasks/s (log scale; median, min-max bars)", fontsize=8)
            ax.tick_params(labelsize=8)
        for ax in list(axes.flat)[len(shown) :]:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(outdir / f"{prefix}_throughput.png", dpi=110)
        plt.close(fig)
    if "W5" in shown:
        fig, ax = plt.subplots(figsize=(9, 4.8))
        palette = plt.get_cmap("tab20")
        for i, p in enumerate(peers):
            lat = sorted(x for v in cells[(p, "W5")]["values"] for x in v.get("latencies_us", []))
            if lat:
                ys = [(k + 1) / len(lat) for k in range(len(lat))]
                ax.plot(
                    lat,
                    ys,
                    label=PEERS[p].name,
                    color=palette(i % 20),
                    lw=2.4 if p in OURS else 1.2,
                    ls="-" if p in OURS else "--",
                )
        ax.set_xscale("log")
        ax.set_xlabel("submit -> result round trip (µs, log scale)")
        ax.set_ylabel("fraction of round trips")
        ax.set_title("W5: idle round-trip latency CDF (all repetitions)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        fig.savefig(outdir / f"{prefix}_latency_cdf.png", dpi=110)
        plt.close(fig)
