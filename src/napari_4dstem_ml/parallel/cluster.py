"""Where the work runs: in process, a LocalCluster of worker processes, or an existing scheduler.

Every wait has a deadline: a scheduler address must accept a TCP connection and answer
Dask's ``identity`` request within :data:`CONNECT_TIMEOUT_S` (a server that accepts and never
answers, or answers in another protocol, is a :class:`SchedulerUnreachable` naming the
address, never a hang or a parse error deep in ``distributed``); a ``tls://`` address needs
Dask's TLS settings; a LocalCluster has at most :func:`max_workers` workers, must start
within :data:`START_TIMEOUT_S`, listens on the loopback interface only, and so does its
dashboard unless another address is asked for (``Compute.dashboard``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

#: seconds to wait for a scheduler (connection and first answer) before giving up
CONNECT_TIMEOUT_S = 4.0
#: seconds a LocalCluster may take to start
START_TIMEOUT_S = 120.0
#: the dashboard of a LocalCluster started here: loopback only, any free port
LOOPBACK_DASHBOARD = "127.0.0.1:0"


class ParallelError(RuntimeError):
    """A distributed job failed (a worker died too often, a task raised, ...)."""


class SchedulerUnreachable(ValueError):
    """No Dask scheduler answers at the given address (a user error: exit status 2)."""


class ClusterError(ValueError):
    """The connection to the Dask scheduler failed during a job; the message names its
    address (a user-facing error: exit status 2, not blamed on the data file)."""


def max_workers() -> int:
    """The most worker processes a LocalCluster may have here: 4 per CPU core."""
    return 4 * max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Compute:
    """Where to run: ``scheduler`` (``"tcp://host:port"`` of a running dask.distributed
    scheduler), else ``workers`` (start a LocalCluster of that many single-threaded worker
    processes), else in this process. ``threads_per_worker``: torch/numba threads per worker."""

    scheduler: str | None = None
    workers: int | None = None
    threads_per_worker: int = 1
    #: where a LocalCluster's dashboard listens (``None``: no dashboard)
    dashboard: str | None = LOOPBACK_DASHBOARD

    def __post_init__(self) -> None:
        if self.scheduler is not None and not str(self.scheduler).strip():
            object.__setattr__(self, "scheduler", None)
        if self.scheduler is not None and self.workers is not None:
            raise ValueError("give either a scheduler address or a number of workers, not both")
        if self.workers is not None and (isinstance(self.workers, bool) or int(self.workers) < 1):
            raise ValueError(f"workers must be a positive integer, got {self.workers!r}")
        if self.workers is not None and int(self.workers) > max_workers():
            raise ValueError(f"--workers {self.workers}: at most {max_workers()} worker processes "
                             f"on this machine ({os.cpu_count() or 1} CPU cores); use a scheduler "
                             "(--scheduler) for a larger cluster")
        if not 1 <= int(self.threads_per_worker) <= 1024:
            raise ValueError(f"threads_per_worker must be 1..1024, got {self.threads_per_worker!r}")
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
    try:
        u = urlparse(s if "://" in s else "tcp://" + s)
        port = u.port
    except ValueError:  # a port out of range or not a number
        u, port = None, None
    if u is None or u.scheme not in ("tcp", "tls") or not u.hostname or port is None \
            or not 1 <= port <= 65535:
        raise SchedulerUnreachable(
            f"scheduler address {scheduler!r}: expected tcp://HOST:PORT (e.g. tcp://127.0.0.1:8786)")
    return u.hostname, int(port)


def _security(scheduler: str):
    """Dask's ``Security`` for a ``tls://`` address (from the Dask configuration), else None."""
    if not str(scheduler).strip().lower().startswith("tls://"):
        return None
    from distributed.security import Security

    sec = Security()
    if sec.get_connection_args("client").get("ssl_context") is None:
        raise SchedulerUnreachable(
            f"{scheduler}: a tls:// scheduler needs Dask's TLS settings (the CA file, the "
            "client's certificate and key: distributed.comm.tls.* in the Dask configuration); "
            "none are set here. Use tcp://HOST:PORT for a scheduler without TLS")
    return sec


def _with_deadline(fn, timeout_s: float):
    """``fn()`` in a daemon thread: (True, result) or (True, exception) when it returned in
    ``timeout_s``, else (False, None) — the thread is left to end on its own."""
    box: list = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box.append(exc)

    t = threading.Thread(target=run, name="stemml-dask-probe", daemon=True)
    t.start()
    t.join(timeout_s)
    return (bool(box), box[0] if box else None)


def handshake(scheduler: str, timeout_s: float = CONNECT_TIMEOUT_S, security=None) -> dict:
    """Dask's ``identity`` answer of the scheduler at ``scheduler``, within ``timeout_s``;
    :class:`SchedulerUnreachable` when nothing answers in time or the answer is not a Dask
    scheduler's (another protocol, a worker, ...)."""
    import asyncio

    async def ask() -> Any:
        from distributed.comm import connect

        args = security.get_connection_args("client") if security is not None else {}
        comm = await connect(scheduler, timeout=timeout_s, **args)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    def run() -> Any:
        return asyncio.run(asyncio.wait_for(ask(), timeout_s))

    done, answer = _with_deadline(run, timeout_s + 1.0)
    if not done or isinstance(answer, (TimeoutError, asyncio.TimeoutError)):
        raise SchedulerUnreachable(
            f"{scheduler} accepts connections but no Dask scheduler answered within "
            f"{timeout_s:g} s (is that the scheduler's address and port?)")
    if isinstance(answer, BaseException):
        reason = ("an answer in another protocol" if isinstance(answer, MemoryError)
                  else " ".join(str(answer).split())[:160] or type(answer).__name__)
        raise SchedulerUnreachable(
            f"{scheduler}: the server there did not answer as a Dask scheduler ({reason})"
        ) from answer
    if not isinstance(answer, dict) or answer.get("type") != "Scheduler":
        kind = answer.get("type") if isinstance(answer, dict) else type(answer).__name__
        raise SchedulerUnreachable(
            f"{scheduler}: the server there is not a Dask scheduler (it answered as {kind!r})")
    return answer


def probe(scheduler: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raise :class:`SchedulerUnreachable` unless something accepts TCP connections there
    and, for ``tcp://``, sends what a Dask scheduler sends first (the length of its
    handshake) within ``timeout_s``: a silent server or one speaking another protocol is
    refused before ``distributed`` reads (and sizes buffers by) its bytes."""
    host, port = _address(scheduler)
    t0 = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            if str(scheduler).strip().lower().startswith("tls://"):
                return
            sock.settimeout(max(0.1, timeout_s - (time.monotonic() - t0)))
            head = b""
            try:
                while len(head) < 8:
                    chunk = sock.recv(8 - len(head))
                    if not chunk:
                        break
                    head += chunk
            except TimeoutError:
                raise SchedulerUnreachable(
                    f"{scheduler} accepts connections but no Dask scheduler answered within "
                    f"{timeout_s:g} s (is that the scheduler's address and port?)") from None
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise SchedulerUnreachable(
            f"no Dask scheduler reachable at {scheduler} ({reason}); start one with "
            "'dask scheduler' or use --workers N for a local cluster") from exc
    size = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
    if not 0 < size <= 2**20:  # a scheduler's handshake: a few hundred bytes
        raise SchedulerUnreachable(
            f"{scheduler}: the server there is not a Dask scheduler (it "
            + ("closed the connection" if len(head) < 8 else "speaks another protocol")
            + "); is that the scheduler's address and port?")


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
        security = _security(compute.scheduler)
        probe(compute.scheduler)
        handshake(compute.scheduler, CONNECT_TIMEOUT_S, security)

        def connect() -> Any:
            return Client(compute.scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False,
                          security=security)

        done, client = _with_deadline(connect, 2 * CONNECT_TIMEOUT_S + 1.0)
        if not done or isinstance(client, BaseException):
            reason = "" if not done else f" ({' '.join(str(client).split())[:160]})"
            raise SchedulerUnreachable(
                f"{compute.scheduler}: the Dask scheduler did not accept this client within "
                f"{2 * CONNECT_TIMEOUT_S:g} s{reason}") from (client if done else None)
        try:
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.close(timeout=CONNECT_TIMEOUT_S)
        return
    with dask.config.set({"distributed.logging.distributed": "error"}):
        try:
            cluster = LocalCluster(n_workers=int(compute.workers), processes=True,
                                   threads_per_worker=int(compute.threads_per_worker),
                                   host="127.0.0.1", dashboard_address=compute.dashboard,
                                   silence_logs=40, timeout=START_TIMEOUT_S)
        except (TimeoutError, OSError) as exc:
            raise ParallelError(f"a LocalCluster of {compute.workers} worker process(es) did not "
                                f"start within {START_TIMEOUT_S:g} s ({exc})") from exc
        client = Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
