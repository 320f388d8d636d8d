# Type stubs for the Cython extension pyqueue._native.
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

NOT_RUN: int

class Task:
    def done(self) -> bool: ...
    def running(self) -> bool: ...
    def cancelled(self) -> bool: ...
    def cancel(self) -> bool: ...
    def result(self, timeout: float | None = None) -> Any: ...
    def exception(self, timeout: float | None = None) -> BaseException | None: ...
    def add_done_callback(self, fn: Callable[[Task], object]) -> None: ...
    def _run_if_pending(self) -> bool: ...

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

class Engine:
    capacity: int
    @property
    def closed(self) -> bool: ...
    def qsize(self) -> int: ...
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Task: ...
    def submit_nowait(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Task: ...
    def submit_many(
        self,
        fn: Callable[..., Any],
        iterable: Iterable[Any],
        *,
        star: bool = False,
        timeout: float | None = None,
    ) -> list[Task]: ...
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
        self, capacity: int, native_workers: int, budget_s: float, put_timeout: float | None
    ) -> None: ...
    def _lane_run(self) -> None: ...
    def _close_lane(self) -> None: ...
    def _set_broken(self, exc: BaseException) -> None: ...
    def _cancel_queued(self, exc: BaseException | None = None) -> list[object]: ...
    def _shutdown_native(self, cancel_pending: bool, wait: bool = True) -> None: ...
    def _after_fork_in_child(self) -> None: ...
    def _map_iter(
        self,
        fn: Callable[..., Any],
        iterator: Iterable[Any],
        star: bool,
        chunksize: int | None,
        ahead: int,
        timeout: float | None,
        adaptive_ahead: bool = False,
    ) -> Iterator[Any]: ...

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
def _builtin_kernels() -> dict[str, tuple[object, str, str]]: ...

