"""Keep a node's worker process running: restart it after a crash, stop it on a signal.

``pyqueue node`` runs a :class:`Supervisor` in the process the user started;
the supervisor runs the real node (``pyqueue node ... --no-supervise``) as its
child and is the only thing between the user and that child:

* a crash (non-zero exit, or death by a signal, e.g. a task that called
  ``os._exit``) is logged at WARNING and the child is restarted after an
  exponential backoff; more than ``max_restarts`` crashes within
  ``restart_window`` seconds is logged at ERROR and the supervisor exits 1;
* a child that exits 0 stopped on purpose and is not restarted; one that
  exits 2 could not start (bad configuration) and is not restarted either;
* SIGTERM or SIGINT is forwarded to the child as SIGTERM (the child then
  stops gracefully, see :func:`serve_until_signalled`), except one from the
  terminal, which reached the child's process group already; a second one,
  or a child still running ``grace + KILL_MARGIN_S`` (5) seconds later, gets the child
  SIGKILLed and the supervisor exits 1;
* the child dies with its supervisor (``PR_SET_PDEATHSIG``, see
  :func:`die_with_supervisor`), so ``kill -9`` of the supervisor leaves no
  orphan running tasks and the coordinator requeues what it held.

Both sides wait for signals with ``sigtimedwait``/``sigwaitinfo`` on a blocked
set instead of handlers: there is no window in which a signal is lost, and the sender's pid
(``si_pid``) and origin (``si_code``) are known, which is how a forwarded
SIGTERM is told apart from one the user sent.

Time limits (the hard limit of ``Client.submit_call(..., time_limit=)``): a
task stuck in C code that holds the GIL stops every Python thread of its
process, so the child cannot enforce it itself.  The supervisor can: it
shares a :class:`DeadlineBoard` (a memfd) with the child, where each worker
thread posts, before it runs a task with a limit, the time after which the
child is to be taken for wedged (start + limit + grace + a margin).  The
child's own watchdog gets the first chance (see :mod:`pyqueue.cluster.node`):
while it can run, it reports the task FAILED with ``TaskTimeout``, stops
gracefully and exits with :data:`EXIT_TIME_LIMIT`.  A posted time that
passes anyway means nothing in the child can run: the supervisor calls its
``on_wedged`` callback with the overdue tasks (``pyqueue node`` reports them
FAILED with ``TaskTimeout`` over a connection of its own, while the wedged
child's connection still holds their leases), then SIGKILLs the child.
Either way the child is replaced at once, and the replacement is not counted
as a crash toward ``max_restarts``: each one ends a task attempt that failed
(retried only when asked), so their number is bounded by the work, unlike a
crash loop.

SIGSTOP cannot be caught, so it cannot be forwarded: to freeze a supervised
node, stop its process group (``kill -STOP -PGID``); the child shares its
supervisor's group.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import mmap
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Callable, NamedTuple

__all__ = [
    "EXIT_TIME_LIMIT",
    "DeadlineBoard",
    "Overdue",
    "Supervisor",
    "block_child_signals",
    "describe_exit",
    "die_with_supervisor",
    "serve_until_signalled",
]

log = logging.getLogger("pyqueue.cluster.supervisor")

#: environment variable through which a child learns its supervisor's pid
SUPERVISOR_ENV = "PYQUEUE_SUPERVISOR_PID"
#: a child exiting with this code failed to start (bad configuration): restarting cannot help
EXIT_STARTUP_ERROR = 2
#: a child exiting with this code had a task stuck past its time limit: replace it at once
EXIT_TIME_LIMIT = 75
#: seconds past the child's grace before the supervisor SIGKILLs it (a pod's
#: terminationGracePeriodSeconds must exceed grace + this)
KILL_MARGIN_S = 5.0
#: environment variable naming the child's DeadlineBoard: "FD:SLOTS"
DEADLINES_ENV = "PYQUEUE_DEADLINES"
_PR_SET_PDEATHSIG = 1
# Signals the supervisor waits for: blocked for the whole of run(), so none is lost.
_SUPERVISOR_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
# Signals the child waits for; SIGUSR1 is the child's own "stop() has returned".
_CHILD_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGUSR1}
_POLL = 0.5
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Caught(NamedTuple):
    """What the supervisor's loop needs of a signal it took."""

    si_signo: int
    #: > 0 when the kernel sent it (the terminal, to the whole process group)
    si_code: int


class Overdue(NamedTuple):
    """A task whose posted deadline passed (see :meth:`DeadlineBoard.overdue`)."""

    task_id: str
    token: int
    limit: float
    grace: float


# seq, kill_at (CLOCK_MONOTONIC seconds, 0: free), limit, grace, token, id length
_HEAD = struct.Struct("<QdddQH")
_ID_BYTES = 512 * 4  # a task id is at most 512 characters of UTF-8
_SLOT = (_HEAD.size + _ID_BYTES + 7) // 8 * 8


class DeadlineBoard:
    """Fixed slots in shared memory where a node posts its tasks' deadlines.

    Each slot has one writer (the worker thread that holds it) and one
    reader (the supervisor), with no lock between two processes: the writer
    makes the slot's sequence number odd, writes, then makes it even again,
    and the reader keeps only a slot it read twice with the same even number
    (a seqlock), so it never acts on half a record.  Times are
    ``time.monotonic()`` (CLOCK_MONOTONIC), which every process shares.

    Thread safety
    -------------
    :meth:`post` and :meth:`clear` on one slot must come from one thread at a time.
    """

    def __init__(self, fd: int, slots: int) -> None:
        if slots < 1:
            raise ValueError("a deadline board needs at least one slot")
        self.fd = fd
        self.slots = slots
        self._mem = mmap.mmap(fd, slots * _SLOT)

    @classmethod
    def create(cls, slots: int) -> DeadlineBoard:
        """A new board (the supervisor side); its fd is inheritable."""
        fd = os.memfd_create("pyqueue-deadlines", 0)
        os.ftruncate(fd, slots * _SLOT)
        os.set_inheritable(fd, True)
        return cls(fd, slots)

    @classmethod
    def from_env(cls) -> DeadlineBoard | None:
        """The board the supervisor passed down, or None (the child side)."""
        raw = os.environ.pop(DEADLINES_ENV, None)  # tasks that start nodes must not inherit it
        if not raw:
            return None
        fd, _, slots = raw.partition(":")
        try:
            board = cls(int(fd), int(slots))
        except (ValueError, OSError) as exc:
            log.warning("ignoring %s=%r: %s", DEADLINES_ENV, raw, exc)
            return None
        os.set_inheritable(board.fd, False)
        return board

    def env_value(self) -> str:
        return f"{self.fd}:{self.slots}"

    def _write(
        self, slot: int, kill_at: float, limit: float, grace: float, token: int, tid: bytes
    ) -> None:
        off = slot * _SLOT
        (seq,) = struct.unpack_from("<Q", self._mem, off)
        struct.pack_into("<Q", self._mem, off, seq | 1)  # odd: being written
        _HEAD.pack_into(self._mem, off, seq | 1, kill_at, limit, grace, token, len(tid))
        self._mem[off + _HEAD.size : off + _HEAD.size + len(tid)] = tid
        struct.pack_into("<Q", self._mem, off, (seq | 1) + 1)  # even again: complete

    def post(
        self, slot: int, task_id: str, token: int, kill_at: float, limit: float, grace: float
    ) -> None:
        """Slot ``slot`` runs ``task_id`` until ``kill_at`` at the latest."""
        tid = task_id.encode()[:_ID_BYTES]
        self._write(slot, kill_at, limit, grace, token, tid)

    def clear(self, slot: int) -> None:
        """Slot ``slot`` runs nothing with a limit."""
        self._write(slot, 0.0, 0.0, 0.0, 0, b"")

    def overdue(self, now: float) -> list[Overdue]:
        """The tasks whose ``kill_at`` is past (the supervisor side)."""
        out = []
        for slot in range(self.slots):
            off = slot * _SLOT
            seq, kill_at, limit, grace, token, n = _HEAD.unpack_from(self._mem, off)
            if seq & 1 or not 0 < kill_at <= now or n > _ID_BYTES:
                continue
            tid = bytes(self._mem[off + _HEAD.size : off + _HEAD.size + n])
            if struct.unpack_from("<Q", self._mem, off)[0] != seq:
                continue  # rewritten while we read: look again at the next poll
            out.append(Overdue(tid.decode(errors="replace"), token, limit, grace))
        return out

    def reset(self) -> None:
        """Clear every slot (for a new child)."""
        self._mem[:] = bytes(len(self._mem))

    def close(self) -> None:
        self._mem.close()
        os.close(self.fd)


def describe_exit(returncode: int) -> str:
    """``"exit code 3"`` or ``"signal SIGKILL"`` for a :class:`subprocess.Popen` return code."""
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


class Supervisor:
    """Run ``command`` as a child process and restart it when it crashes.

    Parameters
    ----------
    command : sequence of str
        The child's command line.
    name : str
        Named in every log line (the node's name).
    max_restarts : int
        Restarts allowed within ``restart_window`` seconds; the crash after
        that makes the supervisor give up (0: never restart).
    restart_window : float
        Seconds over which crashes are counted.
    grace : float
        The child's own shutdown grace; the supervisor SIGKILLs a child that
        is still running ``grace + KILL_MARGIN_S`` seconds after it forwarded SIGTERM.
    backoff, backoff_max : float
        First delay before a restart, doubling after each crash up to ``backoff_max``.
    stable_after : float
        A child that ran at least this long before crashing restarts with the
        first delay again.
    env : dict, optional
        The child's environment (default: ours); the supervisor's pid is added.
    deadline_slots : int
        Slots of the :class:`DeadlineBoard` shared with the child (its task
        slots); 0: no board, no hard time limits.
    on_wedged : callable, optional
        ``on_wedged(overdue, pid)``: called with the tasks whose posted
        deadline passed, before the wedged child is killed; it must return
        within seconds (an exception is logged and the kill goes on).

    Notes
    -----
    Call :meth:`run` from the main thread of a process with no other threads:
    the blocked signal mask is per thread (another thread could take a
    SIGTERM meant for the supervisor), and ``PR_SET_PDEATHSIG`` fires when the
    thread that started the child exits, not the process.

    The child starts with SIGCHLD, SIGTERM and SIGINT blocked, so a signal
    that arrives while it starts up waits for it instead of killing it; a
    pyqueue node sets its own mask (:func:`block_child_signals`), any other
    child must unblock them itself.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        name: str,
        max_restarts: int = 5,
        restart_window: float = 60.0,
        grace: float = 30.0,
        backoff: float = 0.5,
        backoff_max: float = 30.0,
        stable_after: float = 10.0,
        env: dict[str, str] | None = None,
        deadline_slots: int = 0,
        on_wedged: Callable[[list[Overdue], int], object] | None = None,
    ) -> None:
        if max_restarts < 0 or restart_window <= 0 or grace < 0:
            raise ValueError("max_restarts and grace must be >= 0, restart_window > 0")
        self.command = list(command)
        self.name = name
        self.max_restarts = max_restarts
        self.restart_window = restart_window
        self.grace = grace
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.stable_after = stable_after
        self.env = dict(os.environ if env is None else env)
        self.restarts = 0
        #: children replaced for a task stuck past its time limit (not crashes)
        self.replaced = 0
        self.deadline_slots = deadline_slots
        self.on_wedged = on_wedged
        self.board: DeadlineBoard | None = None
        #: stop signals another thread took for us (see run())
        self._stray: collections.deque[int] = collections.deque()
        self.child: subprocess.Popen[bytes] | None = None

    def run(self) -> int:
        """Supervise until the child stops for good; return the exit code to use.

        0 when the child exited 0 (or a signal arrived while no child ran),
        1 after giving up or a forced stop, 2 when the child reported a
        startup error.
        """
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _SUPERVISOR_SIGNALS)
        # Blocking covers this thread only: a thread started before run() (a
        # library's native one) may still take a SIGTERM sent to the process,
        # and its default action would kill us with no stop.  A handler turns
        # that into a note the loop reads within _POLL.
        old_handlers = {sig: signal.signal(sig, self._note_stray_signal) for sig in _STOP_SIGNALS}
        if self.deadline_slots > 0:
            self.board = DeadlineBoard.create(self.deadline_slots)
        try:
            return self._loop()
        finally:
            child = self.child
            if child is not None and child.poll() is None:
                child.kill()  # never leave a child behind, whatever went wrong here
                child.wait()
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
            if self.board is not None:
                self.board.close()
                self.board = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = dict(self.env)
        env[SUPERVISOR_ENV] = str(os.getpid())
        fds: tuple[int, ...] = ()
        if self.board is not None:
            self.board.reset()
            env[DEADLINES_ENV] = self.board.env_value()
            fds = (self.board.fd,)
        child = subprocess.Popen(self.command, env=env, pass_fds=fds)
        log.info(
            "node %s: worker pid %d started",
            self.name,
            child.pid,
            extra={"event": "worker_started", "node": self.name, "pid": child.pid},
        )
        return child

    def _loop(self) -> int:
        crashes: collections.deque[float] = collections.deque()
        consecutive = 0
        started_at = 0.0
        next_start = time.monotonic()
        kill_at: float | None = None  # set once a stop was asked for
        while True:
            now = time.monotonic()
            if self.child is None:
                if kill_at is not None:
                    return 0
                if now >= next_start:
                    self.child = self._spawn()
                    started_at = time.monotonic()
                    continue
                timeout: float | None = next_start - now
            else:
                timeout = None if kill_at is None else max(0.0, kill_at - now)
            # Capped: a SIGCHLD taken by another thread (if a caller has any)
            # delays noticing the exit by at most this much.
            timeout = _POLL if timeout is None else min(timeout, _POLL)
            info = self._next_signal(timeout)
            if info is None or info.si_signo == signal.SIGCHLD:
                child = self.child
                rc = None if child is None else child.poll()
                if child is not None and rc is None and self._wedged(child):
                    if kill_at is not None:
                        return 1  # it was stopping: it stays stopped
                    self.replaced += 1
                    next_start = time.monotonic()
                    continue
                if child is None or rc is None:
                    # still running (or stopped/continued), or in its backoff
                    if child is not None and kill_at is not None and time.monotonic() >= kill_at:
                        log.error(
                            "node %s: worker pid %d still running %g s after SIGTERM; killing it",
                            self.name,
                            child.pid,
                            self.grace + KILL_MARGIN_S,
                            extra={"event": "worker_killed", "node": self.name},
                        )
                        self._kill_child()
                        return 1
                    continue
                self.child = None
                if kill_at is not None:
                    log.info(
                        "node %s: worker stopped (%s)",
                        self.name,
                        describe_exit(rc),
                        extra={"event": "worker_stopped", "node": self.name, "code": rc},
                    )
                    return 0 if rc == 0 else 1
                if rc == 0:
                    log.info(
                        "node %s: worker exited normally; not restarting",
                        self.name,
                        extra={"event": "worker_stopped", "node": self.name, "code": rc},
                    )
                    return 0
                if rc == EXIT_TIME_LIMIT:
                    self.replaced += 1
                    log.warning(
                        "node %s: worker pid %d had a task stuck past its time limit;"
                        " replacing it now (not counted as a crash)",
                        self.name,
                        child.pid,
                        extra={"event": "worker_replaced", "node": self.name, "code": rc},
                    )
                    next_start = time.monotonic()
                    continue
                if rc == EXIT_STARTUP_ERROR:
                    log.error(
                        "node %s: worker failed to start (exit code 2); not restarting",
                        self.name,
                        extra={"event": "worker_startup_failed", "node": self.name},
                    )
                    return EXIT_STARTUP_ERROR
                now = time.monotonic()
                if now - started_at >= self.stable_after:
                    consecutive = 0  # it ran stably: a new crash starts the backoff over
                crashes.append(now)
                while crashes and crashes[0] < now - self.restart_window:
                    crashes.popleft()
                if len(crashes) > self.max_restarts:
                    log.error(
                        "node %s: worker crashed %d times in %g s (last: %s); giving up",
                        self.name,
                        len(crashes),
                        self.restart_window,
                        describe_exit(rc),
                        extra={"event": "gave_up", "node": self.name, "crashes": len(crashes)},
                    )
                    return 1
                delay = min(self.backoff_max, self.backoff * 2**consecutive)
                consecutive += 1
                self.restarts += 1
                log.warning(
                    "node %s: worker pid %d crashed (%s); restarting in %g s"
                    " (crash %d of at most %d in %g s)",
                    self.name,
                    child.pid,
                    describe_exit(rc),
                    delay,
                    len(crashes),
                    self.max_restarts,
                    self.restart_window,
                    extra={"event": "worker_crashed", "node": self.name, "code": rc},
                )
                next_start = now + delay
                continue
            # SIGTERM or SIGINT
            signame = signal.Signals(info.si_signo).name
            if self.child is None:
                log.info("node %s: %s while no worker runs; exiting", self.name, signame)
                return 0
            if kill_at is not None:
                log.warning(
                    "node %s: second %s; killing worker pid %d now",
                    self.name,
                    signame,
                    self.child.pid,
                    extra={"event": "worker_killed", "node": self.name},
                )
                self._kill_child()
                return 1
            kill_at = time.monotonic() + self.grace + KILL_MARGIN_S
            # si_code > 0 means the kernel sent it, i.e. the terminal to our whole
            # process group: the child got its own copy, and a second would make it
            # exit at once. A process's kill() (si_code <= 0) reached only us.
            if info.si_code <= 0:
                self.child.send_signal(signal.SIGTERM)
            log.info(
                "node %s: %s; worker pid %d stops within %g s",
                self.name,
                signame,
                self.child.pid,
                self.grace,
                extra={"event": "stopping", "node": self.name},
            )

    def _note_stray_signal(self, signo: int, _frame: object) -> None:
        self._stray.append(signo)

    def _next_signal(self, timeout: float) -> _Caught | None:
        """The next signal for the loop, waiting at most ``timeout`` s."""
        if self._stray:
            # sender unknown: treated as a kill() that reached only us
            return _Caught(self._stray.popleft(), 0)
        info = signal.sigtimedwait(_SUPERVISOR_SIGNALS, timeout)
        if info is None or info.si_signo not in _SUPERVISOR_SIGNALS:
            # CPython returns an uninitialised siginfo instead of None when the
            # wait is interrupted (EINTR: e.g. SIGSTOP then SIGCONT) past its
            # deadline; that is a timeout.  A stray signal's handler runs here too.
            return _Caught(self._stray.popleft(), 0) if self._stray else None
        return _Caught(info.si_signo, info.si_code)

    def _wedged(self, child: subprocess.Popen[bytes]) -> bool:
        """Kill ``child`` if a task's posted deadline passed (it cannot act
        itself: a task holds its GIL); True if it was killed."""
        if self.board is None:
            return False
        overdue = self.board.overdue(time.monotonic())
        if not overdue:
            return False
        for row in overdue:
            log.error(
                "node %s: task %s (attempt %d) still running %g s past its time limit of %g s"
                " and worker pid %d does not respond (stuck in C code holding the GIL?);"
                " replacing the worker",
                self.name,
                row.task_id,
                row.token,
                row.grace,
                row.limit,
                child.pid,
                extra={"event": "worker_wedged", "node": self.name, "task": row.task_id},
            )
        if self.on_wedged is not None:
            try:
                self.on_wedged(overdue, child.pid)
            except Exception:
                log.exception("node %s: reporting the stuck task(s) failed", self.name)
        self._kill_child()
        return True

    def _kill_child(self) -> None:
        child = self.child
        if child is not None:
            child.kill()
            child.wait()
            self.child = None


def die_with_supervisor() -> int | None:
    """In a supervised child: die (SIGKILL) when the supervisor dies.

    Returns the supervisor's pid, or None when this process is not supervised.
    Exits at once (code 1) if the supervisor is already gone.  Call it first
    thing, from the main thread (the death signal follows the parent thread
    that forked us, and the supervisor is single-threaded).
    """
    raw = os.environ.pop(SUPERVISOR_ENV, None)  # tasks that start nodes must not inherit it
    if not raw:
        return None
    parent = int(raw)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            err = ctypes.get_errno()
            log.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(err))
    # The supervisor may have died before prctl took effect: then we were
    # reparented already and no death signal will ever come.
    if os.getppid() != parent:
        os._exit(1)
    return parent


def block_child_signals() -> None:
    """Block the signals :func:`serve_until_signalled` waits for (main thread,
    before any other thread starts, so that every thread inherits the mask);
    this also unblocks what the supervisor had blocked."""
    signal.pthread_sigmask(signal.SIG_SETMASK, _CHILD_SIGNALS)


def serve_until_signalled(
    stop: Callable[[float], object], grace: float, supervisor: int | None, name: str
) -> int:
    """Wait for SIGTERM/SIGINT, call ``stop(grace)`` and exit the process.

    The first SIGTERM or SIGINT starts ``stop(grace)`` on a thread; once it
    returns the process flushes its logs and ends with ``os._exit(0)``, so a
    worker thread stuck in a task cannot keep it alive.  During the grace a
    SIGINT, or a second SIGTERM, ends it at once with ``os._exit(1)``.
    SIGTERMs from the supervisor only ever start the stop: a service manager
    may signal both processes, and that must not count as a second signal.
    :func:`block_child_signals` must have been called.  Never returns.
    """
    main = threading.get_ident()
    done = threading.Event()

    def run_stop() -> None:
        try:
            stop(grace)
        except BaseException:
            log.exception("node %s: error while stopping", name)
        finally:
            done.set()
            signal.pthread_kill(main, signal.SIGUSR1)

    stopper: threading.Thread | None = None
    direct = 0
    while True:
        info = signal.sigwaitinfo(_CHILD_SIGNALS)
        if info.si_signo == signal.SIGUSR1:
            if done.is_set():
                break
            continue
        from_supervisor = supervisor is not None and info.si_pid == supervisor
        if not from_supervisor:
            direct += 1
        signame = signal.Signals(info.si_signo).name
        if stopper is None:
            log.info(
                "node %s: %s; stopping (running tasks get up to %g s)",
                name,
                signame,
                grace,
                extra={"event": "stopping", "node": name},
            )
            stopper = threading.Thread(target=run_stop, name="pyqueue-node-stop", daemon=True)
            stopper.start()
            continue
        if from_supervisor:
            continue
        if info.si_signo == signal.SIGINT or direct >= 2:
            log.warning(
                "node %s: %s during the grace; exiting now",
                name,
                signame,
                extra={"event": "stop_forced", "node": name},
            )
            _exit(1)
    _exit(0)
    return 0  # unreachable; keeps type checkers content


def _exit(code: int) -> None:
    logging.shutdown()  # flushes every handler
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)
