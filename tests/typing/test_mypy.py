"""The public API type-checks as documented: mypy --strict reveals the type
of every public call in a sample program, and each wrong line of another
program is reported.

A line of ``GOOD`` ending in ``# revealed: X`` must make mypy print exactly
``Revealed type is "X"`` (``builtins.`` dropped); ``# revealed~: RE`` matches a regular expression
(numpy's array types are spelt differently by its versions).  A line of
``BAD`` ending in ``# error: TEXT`` must get an error containing TEXT, and no
other line may get one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pyqueue

mypy = pytest.importorskip("mypy", reason="mypy is in the test extra")

PRELUDE = """
import asyncio
import numpy as np
import pyqueue
from pyqueue.cluster import Client

def double(x: int) -> int:
    return 2 * x

def label(x: int, name: str = "") -> str:
    return f"{name}{x}"

def add(x: int, y: float) -> float:
    return x + y

q = pyqueue.TaskQueue(workers=2)
t = q.submit(double, 3)
a = np.zeros(3)
k = pyqueue.kernels.add_one_f64
pairs = [(1, 2.0)]
nt = q.submit_native(k, a, np.zeros(3))
ex = pyqueue.Executor(max_workers=2)
c = Client("127.0.0.1:1")  # type-checked only: never run
ct = c.submit(double, 3)
"""

GOOD = """
reveal_type(t)  # revealed: pyqueue._native.Task[int]
reveal_type(t.result(timeout=1.0))  # revealed: int
reveal_type(t.exception())  # revealed: BaseException | None
reveal_type(t.done())  # revealed: bool
reveal_type(t.cancel())  # revealed: bool
reveal_type(q.submit(label, 1, name="a"))  # revealed: pyqueue._native.Task[str]
reveal_type(q.submit_nowait(double, 1))  # revealed: pyqueue._native.Task[int]
reveal_type(q.submit_many(double, range(3)))  # revealed: list[pyqueue._native.Task[int]]
reveal_type(q.submit_many(add, pairs, star=True))  # revealed: list[pyqueue._native.Task[float]]
reveal_type(q.map(double, [1, 2]))  # revealed: typing.Iterator[int]
reveal_type(q.map(add, [1], [2.0]))  # revealed: typing.Iterator[float]
reveal_type(q.results([t]))  # revealed: typing.Iterator[pyqueue._native.Task[int]]
reveal_type(q.results())  # revealed: typing.Iterator[pyqueue._native.Task[Any]]
reveal_type(q.as_completed([t]))  # revealed: typing.AsyncIterator[pyqueue._native.Task[int]]
reveal_type(q.map_native(k, a, a))  # revealed~: numpy\\.ndarray\\[.*(32Bit|int32).*\\]
reveal_type(nt)  # revealed: pyqueue._native.NativeTask
reveal_type(nt.result())  # revealed~: numpy\\.ndarray\\[.*(32Bit|int32).*\\]
reveal_type(ex.submit(double, 2))  # revealed: concurrent.futures._base.Future[int]
reveal_type(ex.map(double, [1]))  # revealed: typing.Iterator[int]
handle: pyqueue.Handle[int] = t
reveal_type(ct)  # revealed: pyqueue.cluster.client.ClusterTask[int]
reveal_type(ct.result(timeout=1.0))  # revealed: int
reveal_type(ct.exception())  # revealed: BaseException | None
reveal_type(c.submit(label, 1, name="a"))  # revealed: pyqueue.cluster.client.ClusterTask[str]
reveal_type(c.submit(double, 1, task_id="j"))  # revealed: pyqueue.cluster.client.ClusterTask[int]
reveal_type(c.submit_call(add, (1, 2.0)))  # revealed: pyqueue.cluster.client.ClusterTask[float]
reveal_type(c.map(double, [1, 2]))  # revealed: typing.Iterator[int]
reveal_type(c.results([ct]))  # revealed: typing.Iterator[pyqueue.cluster.client.ClusterTask[int]]
reveal_type(c.results())  # revealed: typing.Iterator[pyqueue.cluster.client.ClusterTask[Any]]
acs = c.as_completed([ct])
reveal_type(acs)  # revealed: typing.AsyncIterator[pyqueue.cluster.client.ClusterTask[int]]
cluster_handle: pyqueue.Handle[int] = ct

async def main() -> None:
    reveal_type(await t)  # revealed: int
    reveal_type(await nt)  # revealed~: numpy\\.ndarray\\[.*(32Bit|int32).*\\]
    reveal_type(await q.gather([t]))  # revealed: list[int]
    async for done in q.as_completed([t]):
        reveal_type(done)  # revealed: pyqueue._native.Task[int]
    reveal_type(await ct)  # revealed: int
    reveal_type(await c.gather([ct]))  # revealed: list[int]
    async for finished in c.as_completed([ct]):
        reveal_type(finished)  # revealed: pyqueue.cluster.client.ClusterTask[int]

q.shutdown()
ex.shutdown(cancel_futures=True)
"""

BAD = """
pyqueue.TaskQueue(workers="two")  # error: "workers"
q.submit(double, "x")  # error: incompatible type "str"; expected "int"
q.submit(double)  # error: Missing positional argument
q.submit(label, 1, nom="a")  # error: Unexpected keyword argument "nom"
text: str = t.result()  # error: Incompatible types in assignment
q.map(double, ["a"])  # error: to "map" of "TaskQueue" has incompatible type
q.submit_many(double, ["a"])  # error: to "submit_many" of "Engine" has incompatible type
ex.submit(double, 1, 2)  # error: Too many arguments
wrong: pyqueue.Handle[str] = t  # error: Incompatible types in assignment
c.submit(double, "x")  # error: No overload variant of "submit" of "Client" matches
c.submit(label, 1, nom="a")  # error: Unexpected keyword argument "nom" for "submit" of "Client"
c.submit(double)  # error: No overload variant of "submit" of "Client" matches
ctext: str = ct.result()  # error: Incompatible types in assignment
cnames: list[str] = list(c.map(double, [1]))  # error: Argument 1 to "map" of "Client"
cwrong: pyqueue.Handle[str] = ct  # error: Incompatible types in assignment

async def bad() -> None:
    name: str = await t  # error: Incompatible types in assignment
    cname: str = await ct  # error: Incompatible types in assignment
"""


def mypy_env() -> dict[str, str]:
    # An installed pyqueue is found through site-packages (PEP 561); an
    # in-place build in a source tree needs its folder on MYPYPATH.
    root = Path(pyqueue.__file__).resolve().parent.parent
    env = dict(os.environ)
    if (root / "setup.py").exists():
        env["MYPYPATH"] = str(root)
    return env


def run_mypy(tmp_path: Path, body: str) -> tuple[list[str], int, list[str]]:
    """mypy --strict over PRELUDE + body; returns (body lines, prelude
    length, output lines)."""
    prelude = textwrap.dedent(PRELUDE).splitlines()
    lines = textwrap.dedent(body).splitlines()
    path = tmp_path / "sample.py"
    path.write_text("\n".join(prelude + lines) + "\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / "c"),
            "--no-error-summary",
            "--hide-error-context",
            "--no-pretty",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=mypy_env(),
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return lines, len(prelude), proc.stdout.splitlines()


def by_line(output: list[str], offset: int) -> dict[int, list[str]]:
    """Messages about the sample, keyed by body line (0-based), from
    ``sample.py:line: kind: text``.  Messages about other files are left out:
    in a source tree (MYPYPATH) mypy also reports on the package's own
    modules under --strict without the project's settings, which `make lint`
    checks with them (an installed package is never reported on)."""
    found: dict[int, list[str]] = {}
    for line in output:
        m = re.match(r"(?:.*/)?sample\.py:(\d+): (error|note): (.*)", line)
        if m:
            found.setdefault(int(m.group(1)) - 1 - offset, []).append(f"{m[2]}: {m[3]}")
    return found


def test_every_public_call_has_the_documented_type(tmp_path):
    lines, offset, output = run_mypy(tmp_path, GOOD)
    found = by_line(output, offset)
    errors = [m for ms in found.values() for m in ms if m.startswith("error")]
    assert not errors, "\n".join(output)
    checked = 0
    for i, line in enumerate(lines):
        m = re.search(r"# revealed(~?): (.*)$", line)
        if not m:
            continue
        checked += 1
        notes = [n for n in found.get(i, []) if n.startswith("note: Revealed type is")]
        assert len(notes) == 1, f"line {i}: {line!r}: {found.get(i)}"
        got = re.fullmatch(r'note: Revealed type is "(.*)"', notes[0])[1]
        got = got.replace("builtins.", "")  # older mypy spells builtins out
        if m[1] == "~":
            assert re.fullmatch(m[2], got), f"{line!r}: revealed {got!r}"
        else:
            assert got == m[2], f"{line!r}: revealed {got!r}"
    assert checked == 36


def test_each_wrong_line_is_reported_and_nothing_else(tmp_path):
    lines, offset, output = run_mypy(tmp_path, BAD)
    found = by_line(output, offset)
    expected = {}
    for i, line in enumerate(lines):
        m = re.search(r"# error: (.*)$", line)
        if m:
            expected[i] = m[1]
    assert len(expected) == 17
    for i, text in expected.items():
        errors = [e for e in found.get(i, []) if e.startswith("error")]
        assert any(text in e for e in errors), f"line {lines[i]!r}: {found.get(i)}"
    stray = {
        i: ms for i, ms in found.items() if i not in expected and any("error" in m for m in ms)
    }
    assert not stray, "\n".join(output)
