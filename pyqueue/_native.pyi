# Type stubs for the Cython extension pyqueue._native.
from collections.abc import Callable, Generator, Iterable, Iterator
from types import GenericAlias
from typing import Any, Generic, Literal, ParamSpec, TypeVar, overload

import numpy as np
import numpy.typing as npt

from pyqueue._stats import EngineStats
from pyqueue._tunables import Tunables

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
X = TypeVar("X")
P = ParamSpec("P")

NOT_RUN: int

class Task(Generic[T_co]):
    def done(self) -> bool: ...
    def running(self) -> bool: ...
    def cancelled(self) -> bool: ...
    def cancel(self) -> bool: ...
    def result(self, timeout: float | None = None) -> T_co: ...
    def exception(self, timeout: float | None = None) -> BaseException | None: ...
    def add_done_callback(self, fn: Callable[[Task[T_co]], object], /) -> None: ...
    def __await__(self) -> Generator[Any, None, T_co]: ...
    def __class_getitem__(cls, item: Any, /) -> GenericAlias: ...
    def _run_if_pending(self) -> bool: ...
    def _mark_yielded(self) -> None: ...

class _Home:
    count: int
    def take(self) -> list[Task[Any]]: ...
    def __len__(self) -> int: ...

class Kernel:
    address: int
    abi: str
    arg_dtype: np.dtype[Any] | None
    out_dtype: np.dtype[Any] | None
    name: str | None

class NativeTask:
    n: int
    def done(self) -> bool: ...
    def cancel(self) -> None: ...
    def result(
        self, timeout: float | None = None, *, raise_on_error: bool = True
    ) -> npt.NDArray[np.int32]: ...
    def add_done_callback(self, fn: Callable[[NativeTask], object], /) -> None: ...
    def __await__(self) -> Generator[Any, None, npt.NDArray[np.int32]]: ...

class Lane:
    def run(self) -> None: ...

class Engine:
    capacity: int
    lane: Lane
    _home: _Home
    @property
    def closed(self) -> bool: ...
    def qsize(self) -> int: ...
    def stats(self) -> EngineStats: ...
    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Task[T]: ...
    def submit_nowait(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> Task[T]: ...
    def _submit_detached(self, fn: Callable[[], object]) -> Task[Any]: ...
    @overload
    def submit_many(
        self,
        fn: Callable[[X], T],
        iterable: Iterable[X],
        *,
        star: Literal[False] = False,
        timeout: float | None = None,
    ) -> list[Task[T]]: ...
    @overload
    def submit_many(
        self,
        fn: Callable[..., T],
        iterable: Iterable[Iterable[Any]],
        *,
        star: Literal[True],
        timeout: float | None = None,
    ) -> list[Task[T]]: ...
    def submit_native(
        self,
        fn: Any,
        args: npt.NDArray[Any],
        out: npt.NDArray[Any],
        *,
        abi: str | None = None,
        chunksize: int | None = None,
        status: npt.NDArray[np.int32] | None = None,
    ) -> NativeTask: ...
    def _engine_start(
        self,
        capacity: int,
        native_workers: int,
        budget_s: float,
        put_timeout: float | None,
        tunables: Tunables,
    ) -> None: ...
    def _close_lane(self) -> None: ...
    def _quiesce_lane(self) -> None: ...
    def _set_broken(self, exc: BaseException) -> None: ...
    def _cancel_queued(self, exc: BaseException | None = None) -> list[object]: ...
    def _shutdown_native(self, cancel_pending: bool, wait: bool = True) -> None: ...
    def _after_fork_in_child(self) -> None: ...
    def _map_iter(
        self,
        fn: Callable[..., T],
        iterator: Iterable[Any],
        star: bool,
        chunksize: int | None,
        ahead: int,
        timeout: float | None,
        adaptive_ahead: bool = False,
    ) -> Iterator[T]: ...

def kernel(
    fn: Any,
    abi: str = "item",
    arg_dtype: Any = None,
    out_dtype: Any = None,
    name: str | None = None,
) -> Kernel: ...
def run_serial(
    fn: Any,
    args: npt.NDArray[Any],
    out: npt.NDArray[Any],
    *,
    abi: str | None = None,
    status: npt.NDArray[np.int32] | None = None,
) -> npt.NDArray[np.int32]: ...
def cpu_count() -> int: ...
def _bump_fork_generation() -> None: ...
def _builtin_kernels() -> dict[str, tuple[object, str, str]]: ...
def _debug_counters() -> dict[str, int] | None: ...
