"""Process harness and result checker for the cluster tests (127.0.0.1 only).

A plain module (not conftest) so tests can import it by a name no other
test directory uses.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pyqueue.cluster import Client
from pyqueue.cluster.config import generate_key
from pyqueue.cluster.local import child_env, cli_command

HERE = Path(__file__).resolve().parent


@dataclass
class CheckReport:
    """What a run delivered compared with what was expected."""

    lost: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    duplicate: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.lost or self.unexpected or self.duplicate)

    def __str__(self) -> str:
        return (
            f"lost={len(self.lost)} {self.lost[:5]} "
            f"unexpected={len(self.unexpected)} {self.unexpected[:5]} "
            f"duplicate={len(self.duplicate)} {self.duplicate[:5]}"
        )


def check(expected: dict[str, Any], delivered: list[tuple[str, Any]]) -> CheckReport:
    """Count lost, unexpected and duplicate results; all must be zero."""
    rep = CheckReport()
    seen: collections.Counter[str] = collections.Counter()
    for tid, value in delivered:
        seen[tid] += 1
        if tid not in expected or expected[tid] != value:
            rep.unexpected.append(tid)
    rep.duplicate = sorted(t for t, n in seen.items() if n > 1)
    rep.lost = sorted(t for t in expected if t not in seen)
    return rep


def wait_until(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Bounded polling: return pred()'s first truthy value, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Harness:
    """Starts coordinator and node processes and cleans every one of them up."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.key = generate_key()
        self.exec_dir = tmp / "exec"
        self.exec_dir.mkdir()
        self.env = child_env(
            self.key,
            {
                "PYQ_EXEC_LOG": str(self.exec_dir),
                "PYQUEUE_NODE_EXECUTOR": os.environ.get("PYQUEUE_NODE_EXECUTOR", "pyqueue"),
            },
        )
        self.env["PYTHONPATH"] = os.pathsep.join([str(HERE), self.env.get("PYTHONPATH", "")])
        self.procs: list[subprocess.Popen[bytes]] = []
        self.clients: list[Client] = []
        self.port = 0
        self.address = ""
        self.coord: subprocess.Popen[bytes] | None = None
        self._n = 0

    def _spawn(
        self,
        args: list[str],
        label: str,
        *,
        cwd: Path | None = None,
        new_group: bool = False,
    ) -> subprocess.Popen[bytes]:
        self._n += 1
        logf = open(self.tmp / f"{self._n:02d}-{label}.log", "wb")
        proc = subprocess.Popen(
            cli_command(*args),
            env=self.env,
            stdout=logf,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            # a supervised node is a group: its supervisor and the worker child
            start_new_session=new_group,
        )
        logf.close()
        proc.label = label  # type: ignore[attr-defined]
        proc.logfile = self.tmp / f"{self._n:02d}-{label}.log"  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def coordinator(
        self, store: str | None = None, fast: bool = True, *extra: str, port: int | None = None
    ) -> subprocess.Popen[bytes]:
        """Start (or restart, on the same port unless ``port`` is given) the
        coordinator; wait until it listens.  It becomes :attr:`coord`, and
        :attr:`address` is where it listens."""
        port_file = self.tmp / f"port-{self._n + 1}"
        args = [
            "coordinator",
            "--bind",
            f"127.0.0.1:{self.port if port is None else port}",
            "--port-file",
            str(port_file),
            "--seed",
            "1",
            "--log-level",
            "INFO",
            *extra,
        ]
        if fast:
            args.append("--fast")
        if store:
            args += ["--store", store]
        proc = self._spawn(args, "coordinator")
        wait_until(
            lambda: port_file.exists() or proc.poll() is not None, 20, "coordinator to listen"
        )
        assert proc.poll() is None, self.log(proc)
        self.address = port_file.read_text().strip()
        self.port = int(self.address.rsplit(":", 1)[1])
        self.coord = proc
        return proc

    def node(
        self,
        workers: int = 1,
        prefetch: int | None = None,
        name: str = "node",
        fast: bool = True,
        *extra: str,
        cwd: Path | None = None,
        connect: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``pyqueue node`` (a supervisor and its worker child, in a
        process group of their own); ``cwd`` is its working directory and
        ``connect`` its ``--connect`` (default: this cluster's coordinator)."""
        args = [
            "node",
            "--connect",
            self.address if connect is None else connect,
            "--workers",
            str(workers),
            "--name",
            name,
            "--log-level",
            "INFO",
            *extra,
        ]
        if prefetch is not None:
            args += ["--prefetch", str(prefetch)]
        if fast:
            args.append("--fast")
        return self._spawn(args, name, cwd=cwd, new_group=True)

    def client(self, address: str | list[str] | None = None, **kw: Any) -> Client:
        """A Client of this cluster's coordinator, or of ``address``; closed at the end."""
        c = Client(self.address if address is None else address, key=self.key.encode(), **kw)
        self.clients.append(c)
        return c

    def wait_nodes(self, client: Client, n: int, timeout: float = 20) -> list[dict[str, Any]]:
        return wait_until(
            lambda: (lambda s: s if len(s) >= n else None)(client.status()["nodes"]),
            timeout,
            f"{n} nodes to join",
        )

    def executions(self) -> collections.Counter[str]:
        """How many times each task id started, across all node processes."""
        out: collections.Counter[str] = collections.Counter()
        for f in self.exec_dir.glob("*.log"):
            for line in f.read_text().splitlines():
                if line.strip():
                    out[line.split()[0]] += 1
        return out

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``pyqueue ARGS --connect <this cluster>`` to its end; its output as text."""
        return subprocess.run(
            cli_command(*args, "--connect", self.address),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def start_order(self) -> list[str]:
        """Task ids in the order they started, when one node process ran them all."""
        (f,) = self.exec_dir.glob("*.log")
        return [line.split()[0] for line in f.read_text().splitlines() if line.strip()]

    @staticmethod
    def log(proc: subprocess.Popen[bytes]) -> str:
        return Path(proc.logfile).read_text(errors="replace")[-4000:]  # type: ignore[attr-defined]

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to ``proc``; SIGSTOP and SIGCONT go to its whole process
        group, as a supervisor cannot forward what it cannot catch."""
        if sig in (signal.SIGSTOP, signal.SIGCONT) and _leads_group(proc):
            os.killpg(proc.pid, sig)
            return
        proc.send_signal(sig)
        if sig == signal.SIGKILL:
            proc.wait(10)

    def close(self) -> None:
        for c in self.clients:
            c.close()
        for p in self.procs:
            if p.poll() is None:
                try:
                    self.kill(p, signal.SIGCONT)  # a stopped process cannot die of SIGTERM
                    p.kill()
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass


def _leads_group(proc: subprocess.Popen[bytes]) -> bool:
    try:
        return os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:
        return False


def children(pid: int) -> list[int]:
    """Pids of the live (not zombie) children of ``pid``, from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # the command name is in parentheses and may hold spaces: split after it
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry))
    return out


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie nobody reaped is dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
