"""The model's pass in this process, with the preprocessor already adapted to the data set:
the linear model as one virtual-image pass, anything else tile by tile (on the data's scan
grid, or on the model's when the preprocessing resamples the scan)."""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

import numpy as np

from ..dataset import Dataset4D
from .events import PredictEvent, Reconstruction

__all__ = ["model_pass"]


def model_pass(model, pre, dataset: Dataset4D, *, tile_rows: int | None = None,
                device: Any = None) -> Generator[PredictEvent, None, Reconstruction]:
    """The model's pass in this process, with ``pre`` already adapted to ``dataset``: the
    linear model as one virtual-image pass, anything else tile by tile (on the data's scan
    grid, or on the model's when the preprocessing resamples the scan)."""
    from ..training.clusters import PatternSource
    from .fields import is_ensemble, iter_predict_source, resolve_device
    from .linear import iter_predict_linear, linear_on_raw_detector

    if device is not None:
        model.to(resolve_device(device))
    ens = is_ensemble(model)
    if linear_on_raw_detector(model, pre, dataset):
        return (yield from iter_predict_linear(model, pre, dataset))
    source = PatternSource(dataset, pre, cache_budget_bytes=0)
    unc = np.full(source.scan_shape, np.nan, np.float32) if ens else None
    if source.grid is None:
        image = yield from iter_predict_source(model, source, tile_rows=tile_rows, uncertainty=unc)
        return Reconstruction(image, unc)
    shown = np.full(dataset.scan_shape, np.nan, np.float32)
    shown_unc = np.full(dataset.scan_shape, np.nan, np.float32) if ens else None
    t0 = time.perf_counter()
    gen = iter_predict_source(model, source, tile_rows=tile_rows, uncertainty=unc)
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            on_model_grid = stop.value
            break
        rows = min(dataset.scan_shape[0], int(ev.rows_done * source.grid.factor[0]))
        if ev.rows_done < ev.rows_total:
            yield PredictEvent(rows, dataset.scan_shape[0], shown, time.perf_counter() - t0,
                               shown_unc)
    shown[:] = source.grid.to_data(on_model_grid)
    if ens:
        shown_unc[:] = np.clip(source.grid.to_data(unc), 0, None)
    ny = dataset.scan_shape[0]
    yield PredictEvent(ny, ny, shown, time.perf_counter() - t0, shown_unc)
    return Reconstruction(shown, shown_unc)
