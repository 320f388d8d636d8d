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
  or a child still running ``grace + 5`` seconds later, gets the child
  SIGKILLed and the supervisor exits 1;
* the child dies with its supervisor (``PR_SET_PDEATHSIG``, see
  :func:`die_with_supervisor`), so ``kill -9`` of the supervisor leaves no
  orphan running tasks and the coordinator requeues what it held.

Both sides wait for signals with ``sigtimedwait``/``sigwaitinfo`` on a blocked
set instead of handlers: there is no window in which a signal is lost, and the sender's pid
(``si_pid``) and origin (``si_code``) are known, which is how a forwarded
SIGTERM is told apart from one the user sent.

SIGSTOP cannot be caught, so it cannot be forwarded: to freeze a supervised
node, stop its process group (``kill -STOP -PGID``); the child shares its
supervisor's group.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Callable

__all__ = [
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
_PR_SET_PDEATHSIG = 1
# Signals the supervisor waits for: blocked for the whole of run(), so none is lost.
_SUPERVISOR_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
# Signals the child waits for; SIGUSR1 is the child's own "stop() has returned".
_CHILD_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGUSR1}
_POLL = 0.5


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
        is still running ``grace + 5`` seconds after it forwarded SIGTERM.
    backoff, backoff_max : float
        First delay before a restart, doubling after each crash up to ``backoff_max``.
    stable_after : float
        A child that ran at least this long before crashing restarts with the
        first delay again.
    env : dict, optional
        The child's environment (default: ours); the supervisor's pid is added.

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
        self.child: subprocess.Popen[bytes] | None = None

    def run(self) -> int:
        """Supervise until the child stops for good; return the exit code to use.

        0 when the child exited 0 (or a signal arrived while no child ran),
        1 after giving up or a forced stop, 2 when the child reported a
        startup error.
        """
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _SUPERVISOR_SIGNALS)
        try:
            return self._loop()
        finally:
            child = self.child
            if child is not None and child.poll() is None:
                child.kill()  # never leave a child behind, whatever went wrong here
                child.wait()
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = dict(self.env)
        env[SUPERVISOR_ENV] = str(os.getpid())
        child = subprocess.Popen(self.command, env=env)
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
            info = signal.sigtimedwait(_SUPERVISOR_SIGNALS, timeout)
            if info is not None and info.si_signo not in _SUPERVISOR_SIGNALS:
                # CPython returns an uninitialised siginfo instead of None when the
                # wait is interrupted (EINTR: e.g. SIGSTOP then SIGCONT) past its
                # deadline; that is a timeout.
                info = None
            if info is None or info.si_signo == signal.SIGCHLD:
                child = self.child
                rc = None if child is None else child.poll()
                if child is None or rc is None:
                    # still running (or stopped/continued), or in its backoff
                    if child is not None and kill_at is not None and time.monotonic() >= kill_at:
                        log.error(
                            "node %s: worker pid %d still running %g s after SIGTERM; killing it",
                            self.name,
                            child.pid,
                            self.grace + 5,
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
            kill_at = time.monotonic() + self.grace + 5
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
