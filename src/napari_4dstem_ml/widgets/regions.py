"""Training and validation regions drawn as rectangles on the scan plane.

The "training regions" Shapes layer in the main viewer holds two rectangles (feature
``region``: "train", "validation"), calibrated like the data set's scan (Å). By default the
upper half trains and the lower half validates; move or resize them (select mode) to choose
other regions. A rectangle covers the scan positions whose centres lie inside it; the core's
:class:`~napari_4dstem_ml.training.clusters.RegionSplit` then keeps only positions whose whole
K×K cluster lies inside.
"""

from __future__ import annotations

import math

import numpy as np

from ..training.clusters import RegionSplit, SplitError

REGIONS_LAYER = "training regions"
REGION_COLOURS = {"train": "#66bb6a", "validation": "#ffa726"}


def rect_from_corners(corners, scan_shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Scan-position rectangle ``(y0, y1, x0, x1)`` (half-open) of the positions whose centres
    lie inside the box of ``corners`` (data coordinates = scan indices), clipped to the scan."""
    c = np.asarray(corners, float)[:, -2:]
    lo, hi = c.min(axis=0), c.max(axis=0)
    ny, nx = scan_shape
    y0 = max(0, math.ceil(lo[0] - 1e-9))
    x0 = max(0, math.ceil(lo[1] - 1e-9))
    y1 = min(ny, math.floor(hi[0] + 1e-9) + 1)
    x1 = min(nx, math.floor(hi[1] + 1e-9) + 1)
    if y1 <= y0 or x1 <= x0:
        raise SplitError(
            f"a region rectangle from ({lo[0]:.1f}, {lo[1]:.1f}) to ({hi[0]:.1f}, {hi[1]:.1f}) "
            f"(scan steps) holds no position of the {ny} × {nx} scan"
        )
    return (y0, y1, x0, x1)


def corners_of(rect: tuple[int, int, int, int]) -> np.ndarray:
    """The box drawn for a rectangle of scan positions (pixel edges: ±0.5)."""
    y0, y1, x0, x1 = rect
    a, b, c, d = y0 - 0.5, y1 - 0.5, x0 - 0.5, x1 - 0.5
    return np.array([[a, c], [a, d], [b, d], [b, c]], float)


def default_rects(scan_shape: tuple[int, int]) -> dict[str, tuple[int, int, int, int]]:
    """Upper half trains, lower half validates (the core's default split)."""
    tr, va = RegionSplit().region_masks(scan_shape)
    rows = np.nonzero(tr.any(axis=1))[0]
    cut = int(rows[-1]) + 1
    ny, nx = scan_shape
    return {"train": (0, cut, 0, nx), "validation": (cut, ny, 0, nx)}


def ensure_regions_layer(session, dataset: str):
    """The regions layer for ``dataset`` (created with the default halves, or reset to them
    when it was drawn for another data set)."""
    viewer = session.viewer
    ds = session.datasets[dataset]
    layers = viewer.layers
    if REGIONS_LAYER in layers:
        layer = layers[REGIONS_LAYER]
        if layer.metadata.get("dataset") == dataset:
            return layer
        layers.remove(layer)
    rects = default_rects(ds.scan_shape)
    names = list(rects)
    layer = viewer.add_shapes(
        [corners_of(rects[n]) for n in names],
        shape_type="rectangle",
        name=REGIONS_LAYER,
        features={"region": names},
        edge_color=[REGION_COLOURS[n] for n in names],
        face_color="transparent",
        edge_width=max(ds.scan_shape) / 200,
        metadata={"dataset": dataset, "own_grid": False},
        **session.scan_layer_kwargs(dataset),
    )
    layer.text = {"string": "{region}", "color": "white", "size": 9, "anchor": "upper_left"}
    return layer


def read_rects(layer, scan_shape: tuple[int, int]) -> dict[str, tuple[int, int, int, int]]:
    """The (last) "train" and "validation" rectangles of the regions layer."""
    out = {}
    regions = list(layer.features["region"]) if "region" in layer.features else []
    for corners, region in zip(layer.data, regions):
        if region in ("train", "validation"):
            out[region] = rect_from_corners(corners, scan_shape)
    return out


def split_for(session, dataset: str) -> RegionSplit:
    """The region split drawn for ``dataset`` (default halves when nothing is drawn)."""
    ds = session.datasets[dataset]
    viewer = session.viewer
    if viewer is None or REGIONS_LAYER not in viewer.layers:
        return RegionSplit()
    layer = viewer.layers[REGIONS_LAYER]
    if layer.metadata.get("dataset") != dataset:
        return RegionSplit()
    rects = read_rects(layer, ds.scan_shape)
    if "train" not in rects:
        raise SplitError("the training-regions layer has no 'train' rectangle")
    return RegionSplit(train=rects["train"], val=rects.get("validation"))


def validation_rect(session, dataset: str) -> tuple[int, int, int, int]:
    """The validation rectangle for ``dataset`` (drawn, or the default lower half)."""
    split = split_for(session, dataset)
    if split.val is not None:
        return tuple(split.val)
    ds = session.datasets[dataset]
    if split.train is None:
        return default_rects(ds.scan_shape)["validation"]
    _, va = split.region_masks(ds.scan_shape)
    ys, xs = np.nonzero(va)
    return (int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1)
