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

#: raw bytes a virtual-image task reads; scan rows a model task predicts (halo cost (K-1)/rows)
VIMG_TASK_BYTES = 128e6
PREDICT_TASK_ROWS = 64
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


def _predict_task(spec: DataSpec, y0: int, y1: int, payload: Any, threads: int) -> np.ndarray:
    """Rows ``y0:y1`` of the model's image, ``(1, rows, Nx)``; for an ensemble ``(2, rows,
    Nx)``: the members' mean and their spread."""
    from ..predict.fields import is_ensemble, iter_predict_source
    from ..training.clusters import PatternSource

    _worker_threads(threads)
    model, pre = payload
    ds = Dataset4D(spec.open(), source=None, reader=spec.kind)
    unc = np.full((y1 - y0, spec.shape[1]), np.nan, np.float32) if is_ensemble(model) else None
    gen = iter_predict_source(model, PatternSource(ds, pre, cache_budget_bytes=0), rows=(y0, y1),
                              uncertainty=unc)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return np.stack([stop.value] if unc is None else [stop.value, unc])


def _sample_task(spec: DataSpec, rows: list[int], col_step: int) -> np.ndarray:
    """The sample patterns of scan rows ``rows`` (every ``col_step``-th column), float32,
    negatives clipped, NaN/inf patterns left out."""
    data = spec.open()
    block = np.stack([np.asarray(data[y, ::col_step], dtype=np.float32) for y in rows])
    block = block.reshape(-1, *block.shape[-2:])
    block = block[np.isfinite(block).all(axis=(1, 2))]
    return np.clip(block, 0, None, out=block)


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


def iter_predict(
    model, preprocessor, dataset: Dataset4D, *, compute: Compute | None = None, client=None,
    rows_per_task: int | None = None,
) -> Generator[BlockEvent, None, np.ndarray]:
    """The model's image ``(Ny, Nx)`` float32 (label units) of ``dataset`` as
    :class:`BlockEvent` s; returns it. The preprocessor is adapted here, then
    :func:`iter_predict_prepared` runs the pass (in process without a cluster)."""
    from ..predict.pipeline import _in_process

    pre = preprocessor.adapt(dataset)
    if _local(compute, client):
        gen = _in_process(model, pre, dataset)
    else:
        gen = _with_client(iter_predict_prepared, model, pre, dataset, compute=compute,
                           client=client, rows_per_task=rows_per_task)
    t0 = time.perf_counter()
    prev = 0
    ny = dataset.scan_shape[0]
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            rec = stop.value
            break
        if getattr(ev, "rows_done", None) is None:  # a Message
            continue
        y0, y1 = ev.rows if ev.rows is not None else (prev, ev.rows_done)
        if ev.rows_done < ny and y1 > y0:
            yield BlockEvent(y0, y1, ev.rows_done, ny, ev.image, time.perf_counter() - t0)
        prev = ev.rows_done
    yield BlockEvent(0 if prev == 0 else min(prev, ny), ny, ny, ny, rec.image,
                     time.perf_counter() - t0)
    return rec.image


def _with_client(fn, *args, compute: Compute | None, client, **kwargs):
    """``fn(*args, client=..., compute=..., **kwargs)`` with ``client``, or a client opened
    for ``compute`` (closed when the generator ends)."""
    with _client_or(compute, client) as cl:
        return (yield from fn(*args, client=cl, compute=compute, **kwargs))


def iter_predict_prepared(
    model, pre, dataset: Dataset4D, *, client, compute: Compute | None = None,
    rows_per_task: int | None = None,
):
    """The model's pass on a Dask cluster, ``pre`` already adapted to ``dataset``: yields
    :class:`~..predict.events.PredictEvent` s (``rows``: the band just finished) and returns a
    :class:`~..predict.events.Reconstruction`.

    Every model kind runs on the workers: a linear model (or an ensemble of them) as its
    raw-detector virtual image(s), one task per band of rows, then the K x K correlation here;
    a CNN or an ensemble of them, broadcast once, each task predicting a band of rows (its halo
    rows read from the file) and, for an ensemble, the members' spread. A model on a resampled
    scan grid runs in process (with a message saying so)."""
    from ..predict.events import Message, PredictEvent, Reconstruction
    from ..predict.fields import is_ensemble
    from ..predict.linear import linear_from_virtual_images, linear_on_raw_detector
    from ..predict.pipeline import _in_process
    from ..training.clusters import check_cluster_size

    ny, nx = dataset.scan_shape
    t0 = time.perf_counter()
    if pre.scan_grid(dataset.scan_shape) is not None:
        yield Message("the model's scan step differs from the data's: the scan is resampled, "
                      "in this process")
        return (yield from _in_process(model, pre, dataset))
    check_cluster_size(int(model.cluster_size), (ny, nx))
    threads = compute.threads_per_worker if compute is not None else 1
    ens = is_ensemble(model)
    if linear_on_raw_detector(model, pre, dataset):
        members = list(model.members) if ens else [model]
        readouts = [pre.raw_readout(m.detector_mask()) for m in members]
        masks = np.stack([r[0] for r in readouts])
        shown = np.full((ny, nx), np.nan, np.float32)
        gen = iter_virtual_image(dataset, masks if ens else masks[0], client=client,
                                 compute=compute, rows_per_task=rows_per_task,
                                 clip_negative=dataset.dtype.kind != "u")
        while True:
            try:
                ev = next(gen)
            except StopIteration as stop:
                vimgs = stop.value
                break
            if ev.rows_done < ny:
                yield PredictEvent(ev.rows_done, ny, shown, time.perf_counter() - t0, None,
                                   rows=(ev.y0, ev.y1))
        image, unc = linear_from_virtual_images(members, readouts,
                                                np.asarray(vimgs).reshape(len(members), ny, nx),
                                                pre)
        yield PredictEvent(ny, ny, image, time.perf_counter() - t0, unc, rows=(0, ny))
        return Reconstruction(image, unc)
    model = model.cpu().eval()
    out = np.full((2 if ens else 1, ny, nx), np.nan, np.float32)
    rows = rows_per_task or PREDICT_TASK_ROWS
    gen = _run(client, _predict_task, DataSpec.from_dataset(dataset), _bands(ny, rows),
               (model, pre), threads, out, "predict")
    for ev in gen:
        yield PredictEvent(ev.rows_done, ny, out[0], ev.elapsed_s, out[1] if ens else None,
                           rows=(ev.y0, ev.y1))
    return Reconstruction(out[0], out[1] if ens else None)


def sample_on_workers(dataset: Dataset4D, n: int, *, client):
    """The job's :class:`~..predict.sample.PatternSample`, read by the workers (the same rows
    as :func:`~..preprocess.sample_patterns`)."""
    from ..predict.sample import PatternSample
    from ..preprocess import PreprocessError, sample_rows

    rows, col_step = sample_rows(dataset.scan_shape, n)
    spec = DataSpec.from_dataset(dataset)
    groups = [rows[i : i + 4] for i in range(0, len(rows), 4)]
    parts = client.gather([client.submit(_sample_task, spec, g, col_step, pure=False)
                           for g in groups])
    patterns = np.concatenate(parts)
    if len(patterns) == 0:
        raise PreprocessError(f"{dataset.source or 'the data set'}: every sampled diffraction "
                              "pattern holds NaN/inf values")
    return PatternSample(patterns, "whole scan rows spread over the scan, read by the workers")


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
