"""The model's pass on a Dask cluster: every model kind on the workers.

The executor (:mod:`napari_4dstem_ml.parallel`: the cluster, the data spec a worker opens the
file with, bands of rows, broadcasting, cancellation) knows nothing of models; this module
puts the prediction on it: a linear model (or an ensemble of them) as its raw-detector virtual
image(s) on the workers, a CNN (or an ensemble, with its spread) as bands of rows predicted on
the workers, each reading its rows and halo itself; and the job's sample read by the workers.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..dataset import Dataset4D
from ..parallel.cluster import Compute
from ..parallel.data import DataSpec
from ..parallel.jobs import _bands, _run, _worker_threads, iter_virtual_image

__all__ = ["PREDICT_TASK_ROWS", "iter_predict_prepared", "sample_on_workers"]

#: scan rows a model task predicts (halo cost (K-1)/rows)
PREDICT_TASK_ROWS = 64


# worker tasks (module-level functions: workers import them)
def _predict_task(spec: DataSpec, y0: int, y1: int, payload: Any, threads: int) -> np.ndarray:
    """Rows ``y0:y1`` of the model's image, ``(1, rows, Nx)``; for an ensemble ``(2, rows,
    Nx)``: the members' mean and their spread."""
    from ..training.clusters import PatternSource
    from .fields import is_ensemble, iter_predict_source

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
    from ..training.clusters import check_cluster_size
    from .events import Message, PredictEvent, Reconstruction
    from .fields import is_ensemble
    from .linear import linear_from_virtual_images, linear_on_raw_detector
    from .local import model_pass

    ny, nx = dataset.scan_shape
    t0 = time.perf_counter()
    if pre.scan_grid(dataset.scan_shape) is not None:
        yield Message("the model's scan step differs from the data's: the scan is resampled, "
                      "in this process")
        return (yield from model_pass(model, pre, dataset))
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
    from ..preprocess import PreprocessError, sample_rows
    from .sample import PatternSample

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


