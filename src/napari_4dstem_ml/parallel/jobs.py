"""The heavy passes as generators of :class:`BlockEvent`, in process or on a Dask cluster.

Distributed runs cut the scan into bands of rows, one task per band, submitted with
``client.submit``; every task opens the file itself (:class:`~.data.DataSpec`) and reads only
its rows (plus the K//2 halo rows a K×K model needs, read from the file, reflected at the scan
edges: the result equals the in-process one). The masks and the model are broadcast to the
workers once (``client.scatter(..., broadcast=True)``). Events come in the order the bands
finish; a task that fails, or a worker that dies more often than Dask allows, ends the job with
:class:`~.cluster.ParallelError` (Dask first reschedules the tasks of a killed worker on the
others). Closing the generator (or an error) cancels the tasks still queued.
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..dataset import Dataset4D
from .cluster import ClusterError, Compute, ParallelError, open_client
from .data import DataSpec

#: raw bytes a virtual-image task reads
VIMG_TASK_BYTES = 128e6
#: patterns read to find the bright-field centre (spread over the scan on a regular grid)
CENTRE_PATTERNS = 4096


@dataclass(frozen=True)
class BlockEvent:
    """Scan rows ``y0:y1`` of ``image`` are done (``rows_done`` of ``rows_total`` in all).

    ``image`` ``(Ny, Nx)`` (or ``(n, Ny, Nx)`` for several masks) float32 is filled in place;
    ``block`` holds the new rows ``image[..., y0:y1, :]``."""

    y0: int
    y1: int
    rows_done: int
    rows_total: int
    image: np.ndarray = field(repr=False)
    elapsed_s: float = 0.0

    @property
    def block(self) -> np.ndarray:
        return self.image[..., self.y0 : self.y1, :]

    @property
    def fraction(self) -> float:
        return self.rows_done / max(1, self.rows_total)


def _bands(ny: int, rows: int) -> list[tuple[int, int]]:
    rows = max(1, int(rows))
    return [(y, min(ny, y + rows)) for y in range(0, ny, rows)]


def _worker_threads(threads: int) -> None:
    """Torch and numba threads of this worker process (one task at a time per thread)."""
    try:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    except ImportError:
        pass
    try:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    except (ImportError, ValueError):
        pass


# ---------------------------------------------------------------------------------------------
# worker tasks (module-level functions: workers import them)
# ---------------------------------------------------------------------------------------------
def _vimg_task(spec: DataSpec, y0: int, y1: int, payload: Any, threads: int) -> np.ndarray:
    from ..detectors.engine import virtual_images

    _worker_threads(threads)
    masks, clip = payload
    data = spec.open()
    rows = data[y0:y1] if isinstance(data, np.ndarray) else _Rows(data, y0, y1)
    return virtual_images(rows, masks, clip_negative=clip)


def _sum_task(spec: DataSpec, ys: list[int], x_start: int, x_step: int) -> tuple[np.ndarray, int]:
    data = spec.open()
    total = np.zeros(spec.shape[2:], np.float64)
    n = 0
    for y in ys:
        block = np.asarray(data[y, x_start::x_step])
        if block.dtype.kind == "f":  # patterns holding NaN/inf are left out
            block = block[np.isfinite(block).all(axis=(1, 2))]
        total += block.sum(0, dtype=np.float64)
        n += len(block)
    return total, n


class _Rows:
    """Rows ``y0:y1`` of a 4D array-like, sliceable along scan rows (for the engine)."""

    def __init__(self, data: Any, y0: int, y1: int) -> None:
        self.data, self.y0, self.y1 = data, y0, y1
        self.shape = (y1 - y0, *(int(n) for n in data.shape[1:]))
        self.dtype = np.dtype(data.dtype)
        self.ndim = 4

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError("rows are read by slices")
        a, b, _ = key.indices(self.shape[0])
        return np.asarray(self.data[self.y0 + a : self.y0 + b])


# ---------------------------------------------------------------------------------------------
# running tasks
# ---------------------------------------------------------------------------------------------
def _run(client, fn, spec: DataSpec, bands: list[tuple[int, int]], shared: Any, threads: int,
         image: np.ndarray, what: str) -> Generator[BlockEvent, None, np.ndarray]:
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    t0 = time.perf_counter()
    futures: dict = {}
    shared_f = None
    try:
        with _cluster_errors(client, what):
            shared_f = client.scatter(shared, broadcast=True, hash=False)
            job = uuid.uuid4().hex[:8]
            futures = {
                client.submit(fn, spec, y0, y1, shared_f, threads, key=f"stemml-{what}-{job}-{y0}",
                              pure=False, retries=0): (y0, y1)
                for y0, y1 in bands
            }
        ny = image.shape[-2]
        done = 0
        completed = as_completed(futures, loop=client.loop)
        while True:
            with _cluster_errors(client, what):
                fut = next(completed, None)
            if fut is None:
                break
            y0, y1 = futures[fut]
            try:
                block = fut.result()
            except KilledWorker as exc:
                raise ParallelError(
                    f"{what}: workers died while processing scan rows {y0}-{y1} (Dask gave up "
                    f"after rescheduling: {exc}); no output written") from exc
            except Exception as exc:
                if fut.status == "cancelled":
                    raise ParallelError(f"{what}: the cluster cancelled the task for scan rows "
                                        f"{y0}-{y1}; no output written") from exc
                if fut.status != "error" and _is_comm_error(exc):  # not the task's own error
                    raise _cluster_error(client, what, exc) from exc
                raise
            image[..., y0:y1, :] = block
            done += y1 - y0
            yield BlockEvent(y0, y1, done, ny, image, time.perf_counter() - t0)
    finally:
        with contextlib.suppress(Exception):
            pending = [f for f in futures if not f.done()]
            if pending:
                client.cancel(pending)
            if shared_f is not None:
                client.cancel([shared_f])
    return image


def _is_comm_error(exc: BaseException) -> bool:
    """A failure of the connection to the cluster (not of a task)."""
    return isinstance(exc, (OSError, TimeoutError)) and (
        type(exc).__module__.startswith(("distributed", "tornado", "asyncio"))
        or isinstance(exc, (ConnectionError, TimeoutError)))


def _cluster_error(client, what: str, exc: BaseException) -> ClusterError:
    try:
        address = client.scheduler.address
    except Exception:  # noqa: BLE001 - a client without a scheduler connection
        address = "the Dask scheduler"
    reason = " ".join(str(exc).split())[:160] or type(exc).__name__
    return ClusterError(f"{what}: the connection to the Dask scheduler {address} failed "
                        f"({reason}); no output written")


@contextlib.contextmanager
def _cluster_errors(client, what: str):
    """Connection failures inside the block become a :class:`ClusterError` naming the
    scheduler's address (never blamed on the data file)."""
    try:
        yield
    except Exception as exc:
        if _is_comm_error(exc):
            raise _cluster_error(client, what, exc) from exc
        raise


def _local(compute: Compute | None, client) -> bool:
    """Whether a job runs in this process: no client given and no cluster asked for."""
    return client is None and (compute is None or compute.in_process)


def _client_or(compute: Compute | None, client):
    """(client, context manager to close) for a call that may start its own cluster."""
    import contextlib

    if client is not None:
        return contextlib.nullcontext(client)
    return open_client(compute)


# ---------------------------------------------------------------------------------------------
# public jobs
# ---------------------------------------------------------------------------------------------
def iter_virtual_image(
    dataset: Dataset4D, masks: np.ndarray, *, compute: Compute | None = None, client=None,
    rows_per_task: int | None = None, clip_negative: bool = False,
) -> Generator[BlockEvent, None, np.ndarray]:
    """Virtual image(s) ``(Ny, Nx)`` (``(n, Ny, Nx)`` for a stack of masks) float32 of
    ``dataset`` with ``masks`` ``(ky, kx)`` / ``(n, ky, kx)``, as in
    :func:`~napari_4dstem_ml.detectors.engine.virtual_images`; returns the image.

    In process (``compute`` in process and no ``client``): the streaming engine. Otherwise each
    task computes a band of rows on a worker that reads them itself. ``clip_negative``: as in
    the engine (negative values count as 0)."""
    ny, nx, ky, kx = dataset.shape
    m = np.asarray(masks, np.float32)
    if _local(compute, client):
        from ..detectors.engine import iter_virtual_images

        t0 = time.perf_counter()
        prev = 0
        image = None
        for ev in iter_virtual_images(dataset.data, m, clip_negative=clip_negative):
            image = ev.image
            if ev.rows_done > prev:
                yield BlockEvent(prev, ev.rows_done, ev.rows_done, ny, image,
                                 time.perf_counter() - t0)
                prev = ev.rows_done
        return image
    spec = DataSpec.from_dataset(dataset)
    row_bytes = nx * ky * kx * dataset.dtype.itemsize
    rows = rows_per_task or max(1, int(VIMG_TASK_BYTES // max(row_bytes, 1)))
    image = np.full((*m.shape[:-2], ny, nx), np.nan, np.float32)
    threads = compute.threads_per_worker if compute is not None else 1
    with _client_or(compute, client) as cl:
        return (yield from _run(cl, _vimg_task, spec, _bands(ny, rows), (m, clip_negative),
                                threads, image, "virtual image"))


def subsample_positions(scan_shape: tuple[int, int], n: int = CENTRE_PATTERNS
                        ) -> tuple[list[int], int, int]:
    """About ``n`` scan positions on a regular grid spread over the scan: (rows, first column,
    column step)."""
    ny, nx = scan_shape
    step = max(1, int(math.ceil(math.sqrt(ny * nx / max(1, n)))))
    return list(range(step // 2 if ny > step // 2 else 0, ny, step)), (step // 2) % nx, step


def subsample_mean_pattern(dataset: Dataset4D, n: int = CENTRE_PATTERNS, *,
                           compute: Compute | None = None, client=None) -> np.ndarray:
    """Mean pattern ``(ky, kx)`` float64 of about ``n`` patterns spread over the scan on a
    regular grid (read on the workers when distributed); patterns holding NaN/inf are left out
    (NaN everywhere when none is finite)."""
    ys, x0, step = subsample_positions(dataset.scan_shape, n)
    if _local(compute, client):
        total, count = _sum_task(_LocalSpec(dataset), ys, x0, step)
        return total / count if count else np.full_like(total, np.nan)
    spec = DataSpec.from_dataset(dataset)
    groups = [ys[i : i + 16] for i in range(0, len(ys), 16)]
    with _client_or(compute, client) as cl:
        futs = [cl.submit(_sum_task, spec, g, x0, step, pure=False) for g in groups]
        parts = cl.gather(futs)
    total, count = sum(p[0] for p in parts), sum(p[1] for p in parts)
    return total / count if count else np.full_like(total, np.nan)


class _LocalSpec:
    """A :class:`DataSpec` stand-in for data already open in this process."""

    def __init__(self, dataset: Dataset4D) -> None:
        self.dataset = dataset
        self.shape = dataset.shape

    def open(self) -> Any:
        return self.dataset.data


def find_centre(dataset: Dataset4D, n: int = CENTRE_PATTERNS, *, compute: Compute | None = None,
                client=None) -> tuple[float, float]:
    """Bright-field disk centre ``(cy, cx)`` px from :func:`subsample_mean_pattern`."""
    from ..detectors.centre import find_bf_centre

    return find_bf_centre(subsample_mean_pattern(dataset, n, compute=compute, client=client))
