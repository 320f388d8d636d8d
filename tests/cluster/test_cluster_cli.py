"""The command lines as a user meets them: one-line startup errors, honest
``--help`` defaults, and a node that imports the user's modules."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pyqueue.cluster.local import cli_command


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli_command(*args), env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def _no_key_env(env: dict[str, str]) -> dict[str, str]:
    out = dict(env)
    out.pop("PYQUEUE_KEY", None)
    out.pop("PYQUEUE_KEY_FILE", None)
    return out


@pytest.mark.parametrize("command", ["coordinator", "node", "status"])
def test_no_key_is_one_line_saying_how_to_make_one(harness, tmp_path, command):
    out = _run([command], _no_key_env(harness.env), tmp_path)
    assert out.returncode == 2, out
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"pyqueue {command}: no cluster key")
    assert 'python -c "import secrets; print(secrets.token_hex(32))" > key' in lines[0]
    assert "chmod 600 key" in lines[0]
    assert "PYQUEUE_KEY_FILE" in lines[0] and "--key-file" in lines[0]


def _busy_port() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


@pytest.mark.parametrize(
    "case",
    [
        "bad-bind",
        "bad-port",
        "port-in-use",
        "missing-key-file",
        "key-file-is-a-folder",
        "store-folder-missing",
        "node-bad-connect",
        "node-bad-connect-in-list",
        "node-duplicate-connect",
        "node-bad-path",
        "status-bad-connect",
        "status-bad-connect-in-list",
        "status-unreachable",
        "status-unreachable-list",
    ],
)
def test_startup_error_is_one_line_and_exit_2(harness, tmp_path, case):
    env = harness.env
    busy = None
    if case == "bad-bind":
        args, want = ["coordinator", "--bind", "nonsense"], "--bind: address 'nonsense'"
    elif case == "bad-port":
        args, want = ["coordinator", "--bind", "127.0.0.1:99999"], "bad port"
    elif case == "port-in-use":
        busy = _busy_port()
        port = busy.getsockname()[1]
        args = ["coordinator", "--bind", f"127.0.0.1:{port}"]
        want = f"cannot listen on 127.0.0.1:{port}: Address already in use"
    elif case == "missing-key-file":
        missing = tmp_path / "no-such-key"
        args, want = ["coordinator", "--key-file", str(missing)], f"cannot read key file {missing}"
        env = _no_key_env(env)
    elif case == "key-file-is-a-folder":
        args, want = ["node", "--key-file", str(tmp_path)], f"cannot read key file {tmp_path}"
        env = _no_key_env(env)
    elif case == "store-folder-missing":
        store = tmp_path / "nowhere" / "q.db"
        args = ["coordinator", "--bind", "127.0.0.1:0", "--store", str(store)]
        want = "does not exist"
    elif case == "node-bad-connect":
        args, want = ["node", "--connect", "nonsense"], "--connect: address 'nonsense'"
    elif case == "node-bad-connect-in-list":
        args = ["node", "--connect", "127.0.0.1:7001,nonsense"]
        want = "--connect: address 'nonsense' must look like HOST:PORT"
    elif case == "node-duplicate-connect":
        args = ["node", "--connect", "127.0.0.1:7001,127.0.0.1:7001"]
        want = "--connect: address '127.0.0.1:7001' is in the list twice"
    elif case == "node-bad-path":
        args, want = ["node", "--path", str(tmp_path / "nope")], "not a directory"
    elif case == "status-bad-connect":
        args, want = ["status", "--connect", "x"], "--connect: address 'x'"
    elif case == "status-bad-connect-in-list":
        args, want = ["status", "--connect", "127.0.0.1:9,"], "--connect: empty address"
    elif case == "status-unreachable-list":
        args = ["status", "--connect", "127.0.0.1:9,127.0.0.1:10", "--timeout", "0.3"]
        want = "could not connect to the coordinator at any of 127.0.0.1:9, 127.0.0.1:10"
    else:
        args, want = ["status", "--connect", "127.0.0.1:9", "--timeout", "0.3"], "could not connect"
    try:
        out = _run(args, env, tmp_path)
    finally:
        if busy is not None:
            busy.close()
    assert out.returncode == 2, out
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr  # no traceback, no log lines
    assert lines[0].startswith(f"pyqueue {args[0]}: "), lines[0]
    assert want in lines[0], lines[0]


def test_second_coordinator_on_a_store_is_one_line(harness, tmp_path):
    store = tmp_path / "q.db"
    first = harness.coordinator(str(store))
    out = _run(
        ["coordinator", "--bind", "127.0.0.1:0", "--store", str(store)], harness.env, tmp_path
    )
    assert out.returncode == 2, out
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("pyqueue coordinator: store ") and f"pid {first.pid}" in lines[0]
    assert first.poll() is None


def _option_help(text: str, option: str) -> str:
    """The help entry of ``option`` (its lines under "options:", joined)."""
    entries: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.split("options:", 1)[1].splitlines():
        if line.startswith("  -"):  # an entry; its continuation lines are indented further
            flags = line.split("  ", 2)[1].strip()
            current = entries.setdefault(flags.split(",")[-1].split()[0], [])
            line = line.strip()[len(flags) :]
        current.append(line.strip())
    assert option in entries, f"{option} not in help"
    return " ".join(" ".join(entries[option]).split())


def test_help_shows_the_real_defaults(harness, tmp_path):
    commands = ("coordinator", "node", "status")
    helps = {c: _run([c, "--help"], harness.env, tmp_path) for c in commands}
    for out in helps.values():
        assert out.returncode == 0, out
        assert "127.0.0.1:127.0.0.1" not in out.stdout
    co, no, st = (helps[c].stdout for c in commands)
    assert "(default 127.0.0.1:7878)" in _option_help(co, "--bind")
    assert "(default 4)" in _option_help(co, "--max-lost")
    assert "(default 20)" in _option_help(co, "--max-attempts")
    assert "(default NORMAL)" in _option_help(co, "--synchronous")
    assert "(default 30; 1.5 with --fast)" in _option_help(co, "--lease")
    assert "(default 5; 0.2 with --fast)" in _option_help(co, "--heartbeat")
    assert "(default 3)" in _option_help(co, "--missed-heartbeats")
    assert "(default INFO)" in _option_help(co, "--log-level")
    assert "(default 127.0.0.1:7878)" in _option_help(no, "--connect")
    assert "(default 8)" in _option_help(no, "--prefetch")
    assert "(default 30)" in _option_help(no, "--grace")
    assert "(default 5)" in _option_help(no, "--max-restarts")
    assert "(default 60)" in _option_help(no, "--restart-window")
    assert "repeatable" in _option_help(no, "--path")
    assert "--no-supervise" not in no  # internal
    assert "(default 127.0.0.1:7878)" in _option_help(st, "--connect")
    assert "(default 5)" in _option_help(st, "--timeout")
    assert "(default WARNING)" in _option_help(st, "--log-level")


def test_cli_node_imports_modules_from_its_folder_and_from_path(harness, tmp_path, monkeypatch):
    work, extra = tmp_path / "work", tmp_path / "extra"
    work.mkdir()
    extra.mkdir()
    body = "import os\n\ndef where():\n    return os.path.abspath(__file__)\n"
    (work / "pyq_only_in_cwd.py").write_text(body)
    (extra / "pyq_only_on_path.py").write_text(body)
    # Only the submitting client imports them from here; the node must find them itself.
    assert str(work) not in harness.env["PYTHONPATH"]
    for d in (work, extra):
        monkeypatch.syspath_prepend(str(d))
    for name in ("pyq_only_in_cwd", "pyq_only_on_path"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import pyq_only_in_cwd
    import pyq_only_on_path

    harness.coordinator()
    node = harness.node(1, None, "cwd-node", True, "--path", str(extra), cwd=work)
    c = harness.client()
    harness.wait_nodes(c, 1)
    assert c.submit(pyq_only_in_cwd.where).result(30) == str(work / "pyq_only_in_cwd.py")
    assert c.submit(pyq_only_on_path.where).result(30) == str(extra / "pyq_only_on_path.py")
    assert node.poll() is None


def test_cli_node_without_the_folder_cannot_import_it(harness, tmp_path, monkeypatch):
    """The control: started elsewhere, the same node fails the task (so the
    test above proves the working directory is what made it work)."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "pyq_elsewhere_mod.py").write_text("def f():\n    return 1\n")
    monkeypatch.syspath_prepend(str(work))
    monkeypatch.delitem(sys.modules, "pyq_elsewhere_mod", raising=False)
    import pyq_elsewhere_mod

    harness.coordinator()
    harness.node(1, None, "elsewhere", True, cwd=tmp_path)
    c = harness.client()
    harness.wait_nodes(c, 1)
    h = c.submit(pyq_elsewhere_mod.f)
    with pytest.raises(Exception, match="pyq_elsewhere_mod"):
        h.result(30)
