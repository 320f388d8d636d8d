"""The public API type-checks: a sample program passes mypy, a wrong one fails."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pyqueue

mypy = pytest.importorskip("mypy", reason="mypy is in the test extra")

GOOD = """
import numpy as np
import pyqueue

def double(x: int) -> int:
    return 2 * x

with pyqueue.TaskQueue(workers=2) as q:
    t: pyqueue.Task = q.submit(double, 3)
    value: object = t.result(timeout=1.0)
    done: bool = t.done()
    many = q.submit_many(double, range(3))
    for task in q.results(many):
        task.exception()
    squares = list(q.map(double, [1, 2]))
    status = q.map_native(pyqueue.kernels.add_one_f64, np.zeros(3), np.zeros(3))
    nt: pyqueue.NativeTask = q.submit_native(pyqueue.kernels.add_one_f64, np.zeros(3), np.zeros(3))
ex = pyqueue.Executor(max_workers=2)
fut = ex.submit(double, 2)
ex.shutdown(cancel_futures=True)
"""

BAD = """
import pyqueue
q = pyqueue.TaskQueue(workers="two")
"""


def mypy_env() -> dict[str, str]:
    # An installed pyqueue is found through site-packages (PEP 561); an
    # in-place build in a source tree needs its folder on MYPYPATH.
    root = Path(pyqueue.__file__).resolve().parent.parent
    env = dict(os.environ)
    if (root / "setup.py").exists():
        env["MYPYPATH"] = str(root)
    return env


def run_mypy(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "sample.py"
    path.write_text(textwrap.dedent(source))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / "c"),
            "--ignore-missing-imports",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=mypy_env(),
    )


def test_public_api_type_checks(tmp_path):
    result = run_mypy(tmp_path, GOOD)
    assert result.returncode == 0, result.stdout + result.stderr


def test_wrong_argument_type_is_caught(tmp_path):
    result = run_mypy(tmp_path, BAD)
    assert result.returncode == 1 and "workers" in result.stdout, result.stdout
