"""Where the work runs: in process, a LocalCluster of worker processes, or an existing scheduler."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

#: seconds to wait for a scheduler before giving up
CONNECT_TIMEOUT_S = 4.0


class ParallelError(RuntimeError):
    """A distributed job failed (a worker died too often, a task raised, ...)."""


class SchedulerUnreachable(ValueError):
    """No Dask scheduler answers at the given address (a user error: exit status 2)."""


@dataclass(frozen=True)
class Compute:
    """Where to run: ``scheduler`` (``"tcp://host:port"`` of a running dask.distributed
    scheduler), else ``workers`` (start a LocalCluster of that many single-threaded worker
    processes), else in this process. ``threads_per_worker``: torch/numba threads per worker."""

    scheduler: str | None = None
    workers: int | None = None
    threads_per_worker: int = 1

    def __post_init__(self) -> None:
        if self.scheduler is not None and not str(self.scheduler).strip():
            object.__setattr__(self, "scheduler", None)
        if self.scheduler is not None and self.workers is not None:
            raise ValueError("give either a scheduler address or a number of workers, not both")
        if self.workers is not None and (isinstance(self.workers, bool) or int(self.workers) < 1):
            raise ValueError(f"workers must be a positive integer, got {self.workers!r}")
        if int(self.threads_per_worker) < 1:
            raise ValueError(f"threads_per_worker must be >= 1, got {self.threads_per_worker!r}")
        if self.scheduler is not None:
            _address(self.scheduler)  # validates

    @property
    def in_process(self) -> bool:
        return self.scheduler is None and self.workers is None

    def describe(self) -> str:
        if self.scheduler:
            return f"Dask scheduler {self.scheduler}"
        if self.workers:
            return f"LocalCluster of {self.workers} worker process(es)"
        return "in process"


def _address(scheduler: str) -> tuple[str, int]:
    s = str(scheduler).strip()
    u = urlparse(s if "://" in s else "tcp://" + s)
    if u.scheme not in ("tcp", "tls") or not u.hostname or u.port is None:
        raise SchedulerUnreachable(
            f"scheduler address {scheduler!r}: expected tcp://HOST:PORT (e.g. tcp://127.0.0.1:8786)")
    return u.hostname, int(u.port)


def probe(scheduler: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raise :class:`SchedulerUnreachable` unless something accepts TCP connections there."""
    host, port = _address(scheduler)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise SchedulerUnreachable(
            f"no Dask scheduler reachable at {scheduler} ({reason}); start one with "
            "'dask scheduler' or use --workers N for a local cluster") from exc


@contextlib.contextmanager
def open_client(compute: Compute | None) -> Iterator[Any]:
    """A ``distributed.Client`` for ``compute`` (``None`` when it runs in process).

    A LocalCluster started here is closed on exit; a client of an existing scheduler is
    closed, the scheduler left running."""
    if compute is None or compute.in_process:
        yield None
        return
    import dask
    from distributed import Client, LocalCluster

    if compute.scheduler:
        t0 = time.monotonic()
        probe(compute.scheduler)
        left = max(0.5, CONNECT_TIMEOUT_S - (time.monotonic() - t0))
        try:
            client = Client(compute.scheduler, timeout=left, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise SchedulerUnreachable(
                f"{compute.scheduler} accepts connections but no Dask scheduler answered "
                f"within {CONNECT_TIMEOUT_S:g} s ({exc})") from exc
        try:
            yield client
        finally:
            client.close()
        return
    with dask.config.set({"distributed.logging.distributed": "error"}):
        cluster = LocalCluster(n_workers=int(compute.workers), processes=True,
                               threads_per_worker=int(compute.threads_per_worker),
                               dashboard_address=":0", silence_logs=40)
        client = Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
