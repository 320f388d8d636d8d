"""Helpers for the lifecycle tests: every case runs in a child interpreter.

The child imports the same ``pyqueue`` the test process imported (PYTHONPATH
is derived from ``pyqueue.__file__``).  ``run_child`` runs a script to the end
with a deadline; ``spawn_child`` starts one for tests that signal it.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import pyqueue

PYQUEUE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(pyqueue.__file__)))

# Prepended to every child script.  SIGINT gets Python's default handler even
# if the test runner was started with SIGINT ignored (a background job), so
# Ctrl-C tests do not silently pass or fail for the wrong reason.
PRELUDE = "import signal as _signal; _signal.signal(_signal.SIGINT, _signal.default_int_handler)\n"


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = PYQUEUE_ROOT + (os.pathsep + old if old else "")
    env.pop("PYTHONWARNINGS", None)
    env.pop("PYTHONDEVMODE", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _script(code: str) -> str:
    return PRELUDE + textwrap.dedent(code)


def run_child(code: str, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter; fail the test (not hang) if it
    does not exit by itself within ``timeout`` seconds."""
    try:
        return subprocess.run(
            [sys.executable, "-c", _script(code)],
            timeout=timeout,
            capture_output=True,
            text=True,
            env=child_env(),
            cwd=PYQUEUE_ROOT,
        )
    except subprocess.TimeoutExpired as exc:  # subprocess.run killed it
        pytest.fail(
            f"child did not exit within {timeout} s (hang)\n"
            f"stdout: {exc.stdout!r}\nstderr: {exc.stderr!r}"
        )


def assert_clean(proc: subprocess.CompletedProcess[str], rc: int = 0) -> None:
    """The child exited with ``rc`` and wrote nothing to stderr."""
    assert proc.returncode == rc and proc.stderr == "", (
        f"exit code {proc.returncode} (want {rc})\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )


class Child:
    """A child interpreter that the test talks to line by line."""

    def __init__(self, code: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _script(code)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
            cwd=PYQUEUE_ROOT,
        )
        self.lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(
                target=self._pump, args=(self.proc.stdout, self.out, True), daemon=True
            ),
            threading.Thread(
                target=self._pump, args=(self.proc.stderr, self.err, False), daemon=True
            ),
        ]
        for t in self._readers:
            t.start()

    def _pump(self, stream, sink: list[str], lines: bool) -> None:
        for line in stream:
            sink.append(line)
            if lines:
                self.lines.put(line)
        if lines:
            self.lines.put("")  # EOF

    def expect_line(self, want: str, timeout: float) -> float:
        """Wait for a stdout line starting with ``want``; return the seconds it took."""
        t0 = time.monotonic()
        while True:
            left = timeout - (time.monotonic() - t0)
            try:
                line = self.lines.get(timeout=max(left, 0.001))
            except queue.Empty:
                self.kill()
                pytest.fail(
                    f"the child did not print {want!r} within {timeout} s\n"
                    f"stdout: {''.join(self.out)!r}\nstderr: {''.join(self.err)!r}"
                )
            if line == "":
                out, err = self.finish(5)
                pytest.fail(
                    f"the child exited (rc={self.proc.returncode}) before printing "
                    f"{want!r}\nstdout: {out!r}\nstderr: {err!r}"
                )
            if line.startswith(want):
                return time.monotonic() - t0

    def sigint(self) -> None:
        self.proc.send_signal(signal.SIGINT)

    def finish(self, timeout: float) -> tuple[str, str]:
        """Wait for exit; fail (after killing it) if it takes over ``timeout`` s.
        Returns the whole stdout and stderr."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self._join()
            pytest.fail(
                f"the child did not exit within {timeout} s\n"
                f"stdout: {''.join(self.out)!r}\nstderr: {''.join(self.err)!r}"
            )
        self._join()
        return "".join(self.out), "".join(self.err)

    def _join(self) -> None:
        for t in self._readers:
            t.join(5)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def spawn_child():
    children: list[Child] = []

    def start(code: str) -> Child:
        child = Child(code)
        children.append(child)
        return child

    yield start
    for child in children:
        child.kill()
        child._join()
        for stream in (child.proc.stdout, child.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def run_py():
    """``run_py(code, timeout=15)`` -> CompletedProcess (see ``run_child``)."""
    return run_child


@pytest.fixture
def clean():
    """``clean(proc, rc=0)``: assert exit code and an empty stderr."""
    return assert_clean


@pytest.fixture
def child_setup() -> tuple[dict[str, str], str]:
    """``(env, cwd)`` for a child a test starts itself (a different command
    line, a terminal, a session of its own): as ``run_child`` uses them."""
    return child_env(), PYQUEUE_ROOT
