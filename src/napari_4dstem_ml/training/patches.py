"""Scan patches for fully convolutional training.

A patch is a rectangle of *output* scan positions ``(y0, y1, x0, x1)`` (half-open). Its input
is the reflected, padded tile of preprocessed patterns ``(y1 - y0 + K - 1, x1 - x0 + K - 1,
oy, ox)`` that ``model.predict_field`` maps to ``(y1 - y0, x1 - x0)`` outputs, so each pattern
passes through the first layer once instead of once per cluster it belongs to.

Patches have a fixed size, so every step runs on tensors of the same shape. Only outputs at training positions (whole K×K cluster inside the training region, label
covered) enter the loss. Patterns of the tile whose (reflected) scan position lies outside
the training region are set to zero before the model sees them: they feed only outputs that
are masked out, so the kept outputs are unchanged and no validation pattern ever enters the
computation (not even with zero weight).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .clusters import PatternSource, reflect_index

__all__ = ["Patch", "patch_plan", "patch_input"]

Rect = tuple[int, int, int, int]


class Patch(NamedTuple):
    """A training patch: the ``window`` ``(y0, y1, x0, x1)`` of outputs the model computes
    (always ``min(P, Ny) × min(P, Nx)``, so every step has the same tensor shapes and the
    convolution back ends reuse their set-up) and the ``cell`` inside it whose training
    positions enter the loss."""

    window: Rect
    cell: Rect

    def kept(self, train_pos: np.ndarray) -> np.ndarray:
        """Boolean ``(h, w)`` mask over the window: the training positions of the cell."""
        y0, y1, x0, x1 = self.window
        c0, c1, d0, d1 = self.cell
        m = np.zeros((y1 - y0, x1 - x0), bool)
        m[c0 - y0 : c1 - y0, d0 - x0 : d1 - x0] = train_pos[c0:c1, d0:d1]
        return m


def patch_plan(train_pos: np.ndarray, patch_size: int, rng: np.random.Generator) -> list[Patch]:
    """One epoch of patches: the scan cut into ``patch_size``² cells on a grid with a random
    offset; cells without training positions dropped; each cell inside a fixed-size window
    (the cell itself, or shifted inwards at the scan edges); in random order.

    Every training position (True in ``train_pos`` ``(Ny, Nx)``) lies in exactly one cell.
    """
    ny, nx = train_pos.shape
    py, px = min(int(patch_size), ny), min(int(patch_size), nx)
    oy, ox = (int(v) for v in rng.integers(0, int(patch_size), size=2))
    rows = np.any(train_pos, axis=1)
    cols = np.any(train_pos, axis=0)
    out: list[Patch] = []
    for y0 in range(-oy, ny, int(patch_size)):
        ya, yb = max(0, y0), min(ny, y0 + int(patch_size))
        if ya >= yb or not rows[ya:yb].any():
            continue
        wy = min(ya, ny - py)
        for x0 in range(-ox, nx, int(patch_size)):
            xa, xb = max(0, x0), min(nx, x0 + int(patch_size))
            if xa >= xb or not cols[xa:xb].any() or not train_pos[ya:yb, xa:xb].any():
                continue
            wx = min(xa, nx - px)
            out.append(Patch((wy, wy + py, wx, wx + px), (ya, yb, xa, xb)))
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def patch_input(
    source: PatternSource, window: Rect, k: int, train_region: np.ndarray
) -> np.ndarray:
    """Padded input tile of ``window`` ``(y0, y1, x0, x1)`` → float32 ``(h + K - 1, w + K - 1,
    oy, ox)``, with the patterns whose reflected scan position is outside ``train_region``
    ``(Ny, Nx)`` zeroed."""
    y0, y1, x0, x1 = window
    h = k // 2
    ny, nx = source.scan_shape
    ry = reflect_index(np.arange(y0 - h, y1 + h), ny)
    rx = reflect_index(np.arange(x0 - h, x1 + h), nx)
    tile = source.rect(ry, rx)
    outside = ~train_region[np.ix_(ry, rx)]
    if outside.any():
        tile[outside] = 0.0
    return tile
