"""The linear model as what it is: one virtual image with its learned mask mapped onto the raw
detector, then a K x K convolution; at virtual-detector speed, in one pass over the data."""

from __future__ import annotations

import time
from collections.abc import Generator

import numpy as np

from ..dataset import Dataset4D
from ..preprocess import Preprocessor
from ..training.clusters import check_cluster_size
from .events import PredictEvent, Reconstruction
from .fields import is_ensemble

__all__ = ["iter_predict_linear", "linear_on_raw_detector", "linear_readout_image"]


def linear_on_raw_detector(model, pre: Preprocessor, dataset: Dataset4D) -> bool:
    """Whether the linear model can run as a virtual detector on the raw data: no intensity
    compression and the data on the model's scan step (the preprocessing's clip of negative
    values is fused into the virtual-image pass for float and signed data)."""
    first = model.members[0] if is_ensemble(model) else model
    return (
        hasattr(first, "cluster_weights")
        and pre.is_affine()
        and dataset.dtype.kind in "uif"
        and pre.scan_grid(dataset.scan_shape) is None
    )


def iter_predict_linear(
    model, pre: Preprocessor, dataset: Dataset4D
) -> Generator[PredictEvent, None, Reconstruction]:
    """The linear model by its factorisation, straight from the raw data: one streaming
    virtual image with the learned mask mapped onto the raw detector
    (:meth:`Preprocessor.raw_readout`; negative values clipped in the same pass, as the
    preprocessing does), then the K×K convolution with the cluster weights (reflected edges).
    Equal to :func:`iter_predict_source`. An ensemble of linear models reads all its members'
    masks in the same single pass."""

    from ..detectors.engine import iter_virtual_images

    members = list(model.members) if is_ensemble(model) else [model]
    readouts = [pre.raw_readout(m.detector_mask()) for m in members]
    masks = np.stack([r[0] for r in readouts])
    k = int(model.cluster_size)
    check_cluster_size(k, dataset.scan_shape)
    t0 = time.perf_counter()
    ny = dataset.scan_shape[0]
    image = np.full(dataset.scan_shape, np.nan, np.float32)
    unc = np.full(dataset.scan_shape, np.nan, np.float32) if len(members) > 1 else None
    vimg = None
    clip = dataset.dtype.kind != "u"  # negative values count as 0, as the preprocessing clips
    for ev in iter_virtual_images(dataset.data, masks if len(members) > 1 else masks[0],
                                  clip_negative=clip):
        vimg = ev.image
        if 0 < ev.rows_done < ev.rows_total:
            yield PredictEvent(ev.rows_done, ny, image, time.perf_counter() - t0, unc)
    vimgs = np.asarray(vimg, np.float64).reshape(len(members), *dataset.scan_shape)
    image, unc = linear_from_virtual_images(members, readouts, vimgs, pre)
    yield PredictEvent(ny, ny, image, time.perf_counter() - t0, unc)
    return Reconstruction(image, unc)


def linear_from_virtual_images(members: list, readouts: list, vimgs: np.ndarray,
                               pre: Preprocessor) -> tuple[np.ndarray, np.ndarray | None]:
    """The linear model's image (label units; for several members their mean) and, for
    several members, their spread, from each member's raw-detector virtual image ``vimgs``
    ``(M, Ny, Nx)`` and readout (:meth:`Preprocessor.raw_readout`)."""
    outs = np.stack([linear_readout_image(m, pre, v, offset, to_label=False)
                     for m, (_, offset), v in zip(members, readouts, vimgs)])
    image = pre.model_to_label(outs.mean(0))
    unc = (outs.std(0) * abs(pre.label_std)).astype(np.float32) if len(members) > 1 else None
    return image, unc


def linear_readout_image(model, pre: Preprocessor, vimg: np.ndarray, offset: float, *,
                         to_label: bool = True) -> np.ndarray:
    """The linear model's image (label units; ``to_label=False``: the model's standardised
    units) from its raw-detector virtual image ``vimg`` ``(Ny, Nx)`` and readout ``offset``
    (:meth:`Preprocessor.raw_readout`): the K×K correlation with the cluster weights,
    reflected at the edges, plus the bias."""
    from scipy.ndimage import correlate

    h = int(model.cluster_size) // 2
    v = np.asarray(vimg, np.float64) + offset
    padded = np.pad(v, h, mode="reflect") if h else v
    out = correlate(padded, model.cluster_weights().astype(np.float64), mode="constant")
    out = out[h : h + v.shape[0], h : h + v.shape[1]] + float(model.bias.detach())
    return pre.model_to_label(out) if to_label else out


