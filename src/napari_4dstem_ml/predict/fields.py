"""A model over every scan position of a data set, tile by tile: ``model.predict_field`` on
padded tiles (each pattern through the first layer once), ensembles with their spread.

Tiles are ``tile_rows`` scan rows with a K//2 halo of rows and columns, reflected at the data
edges (``np.pad(mode="reflect")``), so the result equals predicting the whole reflected field at
once; data are read lazily, one tile (plus halo) at a time. Output ``(Ny, Nx)`` float32 in label
units.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

import numpy as np

from ..training.clusters import PatternSource, check_cluster_size
from .events import PredictEvent
from .tiles import TileFeeder

__all__ = ["is_ensemble", "iter_predict_source", "model_device", "resolve_device"]


def resolve_device(device: Any = "auto"):
    """``"auto"`` → CUDA when available else CPU; strings and ``torch.device`` pass through."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def model_device(model):
    try:
        return next(model.parameters()).device
    except StopIteration:
        import torch

        return torch.device("cpu")


def is_ensemble(model) -> bool:
    return hasattr(model, "predict_field_members")


def iter_predict_source(
    model, source: PatternSource, *, tile_rows: int | None = None,
    rows: tuple[int, int] | None = None, uncertainty: np.ndarray | None = None,
) -> Generator[PredictEvent, None, np.ndarray]:
    """Predict every position of ``source`` (or the scan rows ``rows = (y0, y1)`` only: the
    image is then ``(y1 - y0, Nx)``) tile by tile; yields :class:`PredictEvent` per band of
    rows and returns the image in label units. The model is put in eval mode (and restored).

    Tiles come from :class:`_TileFeeder` (the next one read and preprocessed while the model
    runs on this one) and go through ``model.predict_field``. For an ensemble,
    ``uncertainty`` (float32, the image's shape, filled in place) receives the members'
    standard deviation in label units."""
    import torch

    k = int(model.cluster_size)
    check_cluster_size(k, source.scan_shape)
    ny, nx = source.scan_shape
    r0, r1 = (0, ny) if rows is None else (int(rows[0]), int(rows[1]))
    pre = source.preprocessor
    device = model_device(model)
    image = np.full((r1 - r0, nx), np.nan, np.float32)
    members = is_ensemble(model) and uncertainty is not None
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    feeder = TileFeeder(source, k, tile_rows, (r0, r1))
    # the linear model costs next to nothing: preprocessing is the work, on every core
    tiles = feeder.tiles(background=not hasattr(model, "cluster_weights"))
    try:
        for y0, y1, x0, x1, tile in tiles:
            x = torch.from_numpy(tile).to(device)
            with torch.inference_mode():
                if members:
                    each = model.predict_field_members(x).detach().cpu().numpy()
                    out = each.mean(0)
                    uncertainty[y0 - r0 : y1 - r0, x0:x1] = each.std(0) * abs(pre.label_std)
                else:
                    out = model.predict_field(x).detach().cpu().numpy()
            image[y0 - r0 : y1 - r0, x0:x1] = pre.model_to_label(out)
            if x1 == nx:
                yield PredictEvent(y1 - r0, r1 - r0, image, time.perf_counter() - t0, uncertainty)
    finally:
        tiles.close()
        model.train(was_training)
    return image


