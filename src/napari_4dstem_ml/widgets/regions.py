"""Training and validation regions: one named Shapes layer each, per data set.

The "training region: ‹data set›" and "validation region: ‹data set›" layers in the main viewer
each hold the rectangle of their region, calibrated like the data set's scan (Å). By default the
upper half trains and the lower half validates; move or resize a rectangle (select mode) to
choose other regions. A region is set on purpose: only the rectangle of *its own* layer counts,
and a rectangle newly drawn in a region's layer replaces that region's old one (reported in the
training dock) — a rectangle drawn anywhere else never becomes a region. A rectangle covers the
scan positions whose centres lie inside it; the core's
:class:`~napari_4dstem_ml.training.clusters.RegionSplit` then keeps only positions whose whole
K×K cluster lies inside.
"""

from __future__ import annotations

import math

import numpy as np

from ..training.clusters import RegionSplit, SplitError

#: region key → (layer-name prefix, edge colour, label drawn on the rectangle)
REGIONS = {
    "train": ("training region", "#66bb6a", "training"),
    "validation": ("validation region", "#ffa726", "validation"),
}
REGION_KEY = "region"


def region_layer_name(region: str, dataset: str) -> str:
    """``"training region: ‹data set›"`` or ``"validation region: ‹data set›"``."""
    return f"{REGIONS[region][0]}: {dataset}"


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


def region_layers(session, dataset: str) -> dict:
    """The region layers drawn for ``dataset`` (``{"train": layer, ...}``; absent ones left
    out)."""
    viewer = session.viewer
    if viewer is None:
        return {}
    return {key: viewer.layers[region_layer_name(key, dataset)] for key in REGIONS
            if region_layer_name(key, dataset) in viewer.layers}


def ensure_region_layers(session, dataset: str, on_change=None) -> dict:
    """The two region layers of ``dataset`` (created with the default halves where missing,
    or holding no rectangle). ``on_change(region, text)`` is told when a newly drawn rectangle
    replaced a region's old one."""
    viewer = session.viewer
    ds = session.datasets[dataset]
    rects = default_rects(ds.scan_shape)
    layers = region_layers(session, dataset)
    for key, (_, colour, text) in REGIONS.items():
        layer = layers.get(key)
        if layer is not None and len(layer.data):
            continue
        if layer is not None:
            viewer.layers.remove(layer)
        layer = viewer.add_shapes(
            [corners_of(rects[key])],
            shape_type="rectangle",
            name=region_layer_name(key, dataset),
            features={REGION_KEY: [text]},
            edge_color=colour,
            face_color="transparent",
            edge_width=max(ds.scan_shape) / 160,
            metadata={"dataset": dataset, "own_grid": False, REGION_KEY: key},
            **session.scan_layer_kwargs(dataset),
        )
        layer.feature_defaults = {REGION_KEY: text}
        layer.current_edge_color = colour
        layer.current_face_color = "transparent"
        layer.text = {"string": "{region}", "color": colour, "size": 9, "anchor": "upper_left"}
        layer.events.data.connect(
            lambda event, layer=layer, key=key: _one_rectangle(layer, key, event, on_change))
        layers[key] = layer
    return layers


def _one_rectangle(layer, key: str, event, on_change) -> None:
    """A region's layer holds one rectangle: a newly drawn one replaces the old (said). Done
    on the next event-loop turn, after napari has finished drawing."""
    from qtpy.QtCore import QTimer

    if str(getattr(event, "action", "")) != "added" or len(layer.data) < 2:
        return

    def keep_newest():
        n = len(layer.data)
        if n < 2:
            return
        layer.selected_data = set(range(n - 1))
        layer.remove_selected()
        if on_change is not None:
            on_change(key, f"the new rectangle is now the {REGIONS[key][2]} region (it "
                           "replaced the old one)")

    QTimer.singleShot(0, keep_newest)


def read_rects(session, dataset: str) -> dict[str, tuple[int, int, int, int]]:
    """The drawn rectangles of ``dataset``'s region layers (``SplitError`` for a region layer
    without a rectangle)."""
    ds = session.datasets[dataset]
    out = {}
    for key, layer in region_layers(session, dataset).items():
        if not len(layer.data):
            raise SplitError(f"the '{layer.name}' layer holds no rectangle: draw one, or press "
                             "Show regions to restore the default")
        out[key] = rect_from_corners(layer.data[-1], ds.scan_shape)
    return out


def split_for(session, dataset: str) -> RegionSplit:
    """The region split drawn for ``dataset`` (default halves when nothing is drawn)."""
    if session.viewer is None:
        return RegionSplit()
    rects = read_rects(session, dataset)
    if not rects:
        return RegionSplit()
    if "train" not in rects:
        return RegionSplit(val=rects["validation"])
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
