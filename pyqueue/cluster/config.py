"""Timings, policies and the shared key of a cluster.

The key is looked up, in order: an explicit argument, the ``PYQUEUE_KEY``
environment variable (its UTF-8 bytes), then a key file given explicitly or
through ``PYQUEUE_KEY_FILE``.  A key file should be readable by its owner only
(``chmod 600``); we log a warning when it is not.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, replace

from pyqueue.errors import KeyNotFound

__all__ = [
    "Timings",
    "DEFAULT_TIMINGS",
    "FAST_TIMINGS",
    "load_key",
    "generate_key",
    "dashboard_token",
    "parse_address",
    "parse_addresses",
    "REDIS_URL_SCHEMES",
    "is_redis_url",
]

log = logging.getLogger("pyqueue.cluster")

#: keys shorter than this are accepted with a warning
MIN_KEY_BYTES = 16


@dataclass(frozen=True)
class Timings:
    """All the clocks of the cluster, in seconds.

    Attributes
    ----------
    lease : float
        How long a dispatched task stays leased without a heartbeat from its node.
    heartbeat : float
        How often a node heartbeats.
    missed_heartbeats : int
        A node silent for ``missed_heartbeats * heartbeat`` is declared dead.
    handshake_timeout : float
        Peers that have not authenticated by then are dropped.
    sweep : float
        How often the coordinator checks leases, nodes and scheduled tasks.
    """

    lease: float = 30.0
    heartbeat: float = 5.0
    missed_heartbeats: int = 3
    handshake_timeout: float = 10.0
    sweep: float = 0.5

    @property
    def dead_after(self) -> float:
        """Silence after which a node is dead."""
        return self.heartbeat * self.missed_heartbeats

    def with_(self, **changes: float) -> Timings:
        """Return a copy with some fields changed."""
        return replace(self, **changes)  # type: ignore[arg-type]


DEFAULT_TIMINGS = Timings()
#: the fast profile for tests: a silent node is dead after 0.6 s
FAST_TIMINGS = Timings(
    lease=1.5, heartbeat=0.2, missed_heartbeats=3, handshake_timeout=1.0, sweep=0.05
)


def load_key(
    key: bytes | str | None = None, key_file: str | os.PathLike[str] | None = None
) -> bytes:
    """Return the shared cluster key.

    Raises
    ------
    KeyNotFound
        If no key is given and none is configured.
    """
    if key is not None:
        out = key.encode() if isinstance(key, str) else bytes(key)
    elif key_file is None and os.environ.get("PYQUEUE_KEY"):
        out = os.environ["PYQUEUE_KEY"].encode()
    else:
        path = key_file if key_file is not None else os.environ.get("PYQUEUE_KEY_FILE")
        if not path:
            raise KeyNotFound(
                "no cluster key: set PYQUEUE_KEY, or point PYQUEUE_KEY_FILE / --key-file"
                " at a file holding the key"
            )
        try:
            st = os.stat(path)
            with open(path, "rb") as fh:
                out = fh.read().strip()
        except OSError as exc:
            raise KeyNotFound(f"cannot read key file {path!s}: {exc}") from exc
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("key file %s is readable by group or others; chmod 600 it", path)
    if not out:
        raise KeyNotFound("the cluster key is empty")
    if len(out) < MIN_KEY_BYTES:
        log.warning(
            "the cluster key is only %d bytes; use at least %d random bytes",
            len(out),
            MIN_KEY_BYTES,
        )
    return out


def generate_key() -> str:
    """A fresh random key, printable (64 hex digits), suitable for PYQUEUE_KEY."""
    return os.urandom(32).hex()


def dashboard_token(key: bytes) -> str:
    """The web dashboard's token when none is given: derived from the cluster
    key (whoever holds the key can read it with ``pyqueue http-token``), and
    not the key itself, so that a browser never holds what lets a node join."""
    return hmac.new(key, b"pyqueue dashboard token v1", hashlib.sha256).hexdigest()[:40]


def parse_address(address: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """Split ``"HOST:PORT"`` (or ``":PORT"``, or ``"[v6]:PORT"``) into a tuple.

    Raises
    ------
    ValueError
        If the port is missing or not a number in 0..65535.
    """
    host, sep, port = address.rpartition(":")
    if not sep:
        raise ValueError(f"address {address!r} must look like HOST:PORT")
    host = host.strip("[]") or default_host
    try:
        num = int(port)
    except ValueError:
        raise ValueError(f"address {address!r} has a bad port") from None
    if not 0 <= num <= 65535:
        raise ValueError(f"address {address!r} has a bad port")
    return host, num


def parse_addresses(addresses: str | Iterable[str]) -> list[str]:
    """The coordinator addresses in ``addresses``, validated, in order and as spelled.

    ``addresses`` is one ``"HOST:PORT"``, several joined by commas
    (``"A:1,B:2"``), or a sequence of single addresses (``["A:1", "B:2"]``).
    Blanks around each address are dropped.

    Raises
    ------
    ValueError
        If the list is empty, holds an empty entry, an address that
        :func:`parse_address` refuses (the message names it) or the same
        address twice.
    TypeError
        If ``addresses`` is neither a string nor an iterable of strings.
    """
    if isinstance(addresses, str):
        items = addresses.split(",")
        if not addresses.strip():
            items = []
    elif isinstance(addresses, (bytes, bytearray)) or not isinstance(addresses, Iterable):
        raise TypeError(
            f"coordinator addresses must be a string or a list of strings, not {addresses!r}"
        )
    else:
        items = list(addresses)
        for item in items:
            if not isinstance(item, str):
                raise TypeError(f"coordinator address {item!r} is not a string")
            if "," in item:
                raise ValueError(f"address {item!r} holds a comma: give one address per item")
    if not items:
        raise ValueError("no coordinator address given")
    out: list[str] = []
    seen: dict[tuple[str, int], str] = {}
    for item in items:
        spelled = item.strip()
        if not spelled:
            raise ValueError(f"empty address in the list {addresses!r}")
        target = parse_address(spelled)
        if target in seen:
            raise ValueError(
                f"address {spelled!r} is in the list twice"
                + (f" (as {seen[target]!r})" if seen[target] != spelled else "")
            )
        seen[target] = spelled
        out.append(spelled)
    return out


#: the ``--store`` URLs that name a Redis store (the rest is a SQLite path)
REDIS_URL_SCHEMES = (
    "redis://",
    "rediss://",
    "redis+cluster://",
    "rediss+cluster://",
    "unix://",
)


def is_redis_url(store: str | None) -> bool:
    """True when ``store`` names a Redis store rather than a SQLite file."""
    return store is not None and store.startswith(REDIS_URL_SCHEMES)
