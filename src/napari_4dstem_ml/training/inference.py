"""Chunked prediction of a whole scan with bounded memory.

The scan is processed in tiles of ``tile_rows`` scan rows; each tile is read with a K//2 halo
of rows (reflected at the data edges, ``np.pad(mode="reflect")`` semantics) and the columns are
reflected too, so the result equals predicting the whole reflected field at once. Data sets are
read lazily, one tile (plus halo) at a time. Output ``(Ny, Nx)`` float32 in label units.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..dataset import Dataset4D
from ..preprocess import Preprocessor
from .clusters import PatternSource, check_cluster_size, default_tile_rows

__all__ = [
    "PredictEvent",
    "PredictionError",
    "Reconstruction",
    "iter_reconstruct",
    "iter_predict",
    "iter_predict_linear",
    "iter_predict_source",
    "linear_on_raw_detector",
    "predict",
    "resolve_device",
]


class PredictionError(ValueError):
    """A prediction that is NaN/inf or zero everywhere: garbage, never returned."""


@dataclass(frozen=True)
class PredictEvent:
    """Progress: ``rows_done`` of ``rows_total`` scan rows are in ``image``.

    ``image`` is the ``(Ny, Nx)`` float32 result being filled in place (NaN where not yet
    predicted, label units); copy it to keep a snapshot. ``uncertainty``: for an ensemble,
    the members' standard deviation (label units), filled the same way.
    """

    rows_done: int
    rows_total: int
    image: np.ndarray
    elapsed_s: float
    uncertainty: np.ndarray | None = None

    @property
    def fraction(self) -> float:
        return self.rows_done / max(1, self.rows_total)


def resolve_device(device: Any = "auto"):
    """``"auto"`` → CUDA when available else CPU; strings and ``torch.device`` pass through."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _model_device(model):
    try:
        return next(model.parameters()).device
    except StopIteration:
        import torch

        return torch.device("cpu")


def _is_ensemble(model) -> bool:
    return hasattr(model, "predict_field_members")


def iter_predict_source(
    model, source: PatternSource, *, tile_rows: int | None = None, uncertainty: np.ndarray | None = None
) -> Generator[PredictEvent, None, np.ndarray]:
    """Predict every position of ``source`` in tiles; yields :class:`PredictEvent` per tile and
    returns the image in label units. The model is put in eval mode (and restored after).

    For an ensemble, ``uncertainty`` (an ``(Ny, Nx)`` float32 array, filled in place) receives
    the members' standard deviation in label units.
    """
    import torch

    k = int(model.cluster_size)
    check_cluster_size(k, source.scan_shape)
    ny, nx = source.scan_shape
    if tile_rows is None:
        tile_rows = default_tile_rows(source, k)
    tile_rows = max(1, int(tile_rows))
    pre = source.preprocessor
    device = _model_device(model)
    image = np.full((ny, nx), np.nan, np.float32)
    members = _is_ensemble(model) and uncertainty is not None
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    try:
        for y0 in range(0, ny, tile_rows):
            y1 = min(ny, y0 + tile_rows)
            tile = torch.from_numpy(np.ascontiguousarray(source.padded_tile(y0, y1, k)))
            with torch.no_grad():
                if members:
                    each = model.predict_field_members(tile.to(device)).detach().cpu().numpy()
                    out = each.mean(0)
                    uncertainty[y0:y1] = each.std(0) * abs(pre.label_std)
                else:
                    out = model.predict_field(tile.to(device)).detach().cpu().numpy()
            image[y0:y1] = pre.model_to_label(out)
            yield PredictEvent(y1, ny, image, time.perf_counter() - t0, uncertainty)
    finally:
        model.train(was_training)
    return image


@dataclass
class Reconstruction:
    """A model's image of a data set: ``image`` ``(Ny, Nx)`` float32 in label units and, for
    an ensemble, ``uncertainty`` (the members' per-pixel standard deviation, label units)."""

    image: np.ndarray
    uncertainty: np.ndarray | None = None


def iter_reconstruct(
    model,
    preprocessor: Preprocessor,
    dataset: Dataset4D,
    *,
    tile_rows: int | None = None,
    device: Any = None,
) -> Generator[PredictEvent, None, Reconstruction]:
    """Like :func:`iter_predict`, returning a :class:`Reconstruction` (image and, for an
    ensemble, its uncertainty map). An image that is NaN/inf or zero everywhere is garbage:
    :class:`PredictionError` naming the data set."""
    rec = yield from _iter_reconstruct(model, preprocessor, dataset, tile_rows=tile_rows,
                                       device=device)
    image = rec.image
    finite = np.isfinite(image)
    if not finite.any() or not np.any(image[finite]):
        what = "NaN/inf" if not finite.any() else "zero"
        raise PredictionError(f"{dataset.source or 'the data set'}: the prediction is {what} "
                              "everywhere (the data or the model hold no usable values)")
    return rec


def _iter_reconstruct(
    model,
    preprocessor: Preprocessor,
    dataset: Dataset4D,
    *,
    tile_rows: int | None = None,
    device: Any = None,
) -> Generator[PredictEvent, None, Reconstruction]:
    if device is not None:
        model.to(resolve_device(device))
    pre = preprocessor.adapt(dataset)
    ens = _is_ensemble(model)
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
            yield PredictEvent(rows, dataset.scan_shape[0], shown, time.perf_counter() - t0, shown_unc)
    shown[:] = source.grid.to_data(on_model_grid)
    if ens:
        shown_unc[:] = np.clip(source.grid.to_data(unc), 0, None)
    ny = dataset.scan_shape[0]
    yield PredictEvent(ny, ny, shown, time.perf_counter() - t0, shown_unc)
    return Reconstruction(shown, shown_unc)


def iter_predict(
    model,
    preprocessor: Preprocessor,
    dataset: Dataset4D,
    *,
    tile_rows: int | None = None,
    device: Any = None,
) -> Generator[PredictEvent, None, np.ndarray]:
    """Generator form of :func:`predict`: yields a :class:`PredictEvent` after every tile and
    returns (``StopIteration.value``) the ``(Ny, Nx)`` image in label units.

    ``preprocessor`` is adapted to ``dataset`` first (its centre, detector pixel and dose are
    refitted when it is another data set). When the data set's scan step differs from the
    model's, the model runs on a resampled scan grid (:class:`~..preprocess.ScanGrid`) and
    the image is interpolated back onto the data's grid at the end. ``device``: move the
    model there first (``None``: leave it where it is; ``"auto"``: CUDA when available).
    Ensembles also fill each event's ``uncertainty``.
    """
    rec = yield from iter_reconstruct(model, preprocessor, dataset, tile_rows=tile_rows, device=device)
    return rec.image


def linear_on_raw_detector(model, pre: Preprocessor, dataset: Dataset4D) -> bool:
    """Whether the linear model can run as a virtual detector on the raw data: no intensity
    compression, unsigned-integer counts (no negatives, so clipping changes nothing) and the
    data on the model's scan step."""
    first = model.members[0] if _is_ensemble(model) else model
    return (
        hasattr(first, "cluster_weights")
        and pre.is_affine()
        and np.issubdtype(dataset.dtype, np.unsignedinteger)
        and pre.scan_grid(dataset.scan_shape) is None
    )


def iter_predict_linear(
    model, pre: Preprocessor, dataset: Dataset4D
) -> Generator[PredictEvent, None, Reconstruction]:
    """The linear model by its factorisation, straight from the raw data: one streaming
    virtual image with the learned mask mapped onto the raw detector
    (:meth:`Preprocessor.raw_readout`), then the K×K convolution with the cluster weights
    (reflected edges). Equal to :func:`iter_predict_source` for data without negatives. An
    ensemble of linear models reads all its members' masks in the same single pass."""
    from scipy.ndimage import correlate

    from ..detectors.engine import iter_virtual_images

    members = list(model.members) if _is_ensemble(model) else [model]
    readouts = [pre.raw_readout(m.detector_mask()) for m in members]
    masks = np.stack([r[0] for r in readouts])
    k = int(model.cluster_size)
    check_cluster_size(k, dataset.scan_shape)
    t0 = time.perf_counter()
    ny = dataset.scan_shape[0]
    image = np.full(dataset.scan_shape, np.nan, np.float32)
    unc = np.full(dataset.scan_shape, np.nan, np.float32) if len(members) > 1 else None
    vimg = None
    for ev in iter_virtual_images(dataset.data, masks if len(members) > 1 else masks[0]):
        vimg = ev.image
        if 0 < ev.rows_done < ev.rows_total:
            yield PredictEvent(ev.rows_done, ny, image, time.perf_counter() - t0, unc)
    vimgs = np.asarray(vimg, np.float64).reshape(len(members), *dataset.scan_shape)
    h = k // 2
    outs = []
    for m, (_, offset), v in zip(members, readouts, vimgs):
        v = v + offset
        padded = np.pad(v, h, mode="reflect") if h else v
        o = correlate(padded, m.cluster_weights().astype(np.float64), mode="constant")
        outs.append(o[h : h + v.shape[0], h : h + v.shape[1]] + float(m.bias.detach()))
    outs = np.stack(outs)
    image[:] = pre.model_to_label(outs.mean(0))
    if unc is not None:
        unc[:] = outs.std(0) * abs(pre.label_std)
    yield PredictEvent(ny, ny, image, time.perf_counter() - t0, unc)
    return Reconstruction(image, unc)


def predict(
    model,
    preprocessor: Preprocessor,
    dataset: Dataset4D,
    *,
    tile_rows: int | None = None,
    progress: Callable[[PredictEvent], Any] | None = None,
    device: Any = None,
) -> np.ndarray:
    """Predict the image ``(Ny, Nx)`` float32 (label units) of ``dataset``, tile by tile.

    ``progress`` is called with each :class:`PredictEvent`.
    """
    gen = iter_predict(model, preprocessor, dataset, tile_rows=tile_rows, device=device)
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(ev)
