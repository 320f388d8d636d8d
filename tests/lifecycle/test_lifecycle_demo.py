"""`python -m pyqueue demo` (the README quickstart) run as a user runs it, on
small sizes: every stage reports, stdout that is not a terminal gets no
control codes, a terminal gets rich's live bars, and the LocalCluster stage
leaves no process behind."""

from __future__ import annotations

import contextlib
import os
import pty
import re
import signal
import subprocess
import sys

SMALL = ["--samples", "20000", "--blocks", "40", "--records", "500"]


def demo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pyqueue", "demo", *SMALL, *args]


def session_members(sid: int) -> list[str]:
    """Live (non-zombie) processes in session ``sid``, as "pid cmdline"."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # it exited while we looked
            continue
        state, session = fields[0], int(fields[3])
        if session == sid and state != "Z":
            found.append(f"{entry} {cmdline}")
    return found


def test_demo_to_a_pipe_reports_every_stage_without_control_codes_and_stops_its_cluster(
    child_setup, tmp_path
):
    env, cwd = child_setup
    # A session of its own: the coordinator, the node supervisors and their
    # worker processes all inherit it, so once the demo has exited, any of
    # them still alive in that session was leaked.  Output goes to files, not
    # pipes, so that a leaked child holding them open cannot stall the test.
    with open(tmp_path / "out", "wb") as out_f, open(tmp_path / "err", "wb") as err_f:
        proc = subprocess.Popen(
            demo_command("--cluster-tasks", "6"),
            stdout=out_f,
            stderr=err_f,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    try:
        proc.wait(timeout=120)
        left = session_members(proc.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the demo left: the test ends it
        if proc.poll() is None:
            proc.wait()
    out, err = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()
    assert proc.returncode == 0 and err == "", f"rc {proc.returncode}\n{out}\n{err}"
    assert left == [], f"processes left behind by the demo: {left}"

    # A CI log: no cursor movement, no colour, no carriage returns.
    assert "\x1b" not in out and "\r" not in out, repr(out)
    lines = out.splitlines()
    starts = [
        next(i for i, line in enumerate(lines) if line.startswith(f"stage {n} ")) for n in "1234"
    ]
    assert starts == sorted(starts)
    # Each bar is printed once, in its final state, under its stage.
    blocks_bar = [i for i, line in enumerate(lines) if re.search(r"\b40/40 blocks\b", line)]
    tasks_bar = [i for i, line in enumerate(lines) if re.search(r"\b6/6 tasks\b", line)]
    assert len(blocks_bar) == 1 and starts[1] < blocks_bar[0] < starts[2], out
    assert len(tasks_bar) == 1 and starts[3] < tasks_bar[0], out

    assert "6 tasks x 300,000 steps" in lines[starts[3]]
    assert "LocalCluster of 2 node processes" in lines[starts[3]]
    summary = re.search(
        r"serial (\d+\.\d\d) s, LocalCluster (\d+\.\d\d) s: (\d+\.\d\d)x "
        r"\(cluster start (\d+\.\d\d) s, not counted\); coordinator and 2 nodes stopped",
        out,
    )
    assert summary, out
    serial, remote, ratio, _start = map(float, summary.groups())
    assert serial > 0 and remote > 0 and ratio > 0
    assert lines[-1].startswith("done: ") and "6 pure-Python tasks on 2 processes" in lines[-1]


def test_demo_on_a_terminal_draws_live_bars(child_setup):
    env, cwd = child_setup
    # rich redraws the bar in place on a terminal: carriage returns and
    # erase-line codes, ending on the full count.
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        demo_command("--cluster-tasks", "0"),
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=subprocess.PIPE,
        env={**env, "TERM": "xterm", "COLUMNS": "100"},
        cwd=cwd,
    )
    os.close(follower)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        err = proc.stderr.read().decode() if proc.stderr else ""
        proc.wait(timeout=120)
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
    out = b"".join(chunks).decode()
    assert proc.returncode == 0 and err == "", f"rc {proc.returncode}\n{out!r}\n{err}"
    assert "\x1b[2K" in out and "40/40" in out, repr(out)
    assert "stage 4" not in out  # --cluster-tasks 0 skips it
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    assert re.search(r"40/40 blocks", plain)
