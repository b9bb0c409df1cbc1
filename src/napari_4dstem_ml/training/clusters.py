"""K×K neighbourhoods ("clusters") of diffraction patterns and train/validation region splits.

Axis order ``(scan_y, scan_x, ky, kx)``. The cluster of scan position (y, x) holds the patterns
at (y + dy, x + dx), ``dy, dx`` in ``-K//2 … K//2``, with the centre at ``[K//2, K//2]``.
At the data edges indices are *reflected* with ``np.pad(mode="reflect")`` semantics: the edge
row is not repeated (index -1 → 1, -2 → 2, N → N-2), which needs ``N > K//2``.

Patterns come from a :class:`PatternSource`: the whole field preprocessed once into a float32
cache when it fits in a memory budget, else gathered from the (lazy) data and preprocessed per
batch. A batch is gathered with reflected indices into one ``(B, K, K, oy, ox)`` array; K²
copies of the field are never made.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..dataset import Dataset4D
from ..preprocess import Preprocessor

__all__ = [
    "PatternSource",
    "RegionSplit",
    "SplitError",
    "check_cluster_size",
    "cluster_indices",
    "reflect_index",
]


class SplitError(ValueError):
    """A region split or cluster size does not fit the scan."""


def check_cluster_size(k: int, scan_shape: tuple[int, int]) -> int:
    """Validate the cluster size K (odd, >= 1, half-width smaller than the scan); returns K."""
    if isinstance(k, bool) or int(k) != k or k < 1 or k % 2 != 1:
        raise SplitError(f"cluster size K must be an odd integer >= 1, got {k!r}")
    h = int(k) // 2
    if h and min(scan_shape) <= h:
        raise SplitError(
            f"cluster size K={k} needs a scan of at least {h + 1} × {h + 1} positions for "
            f"reflection at the edges, got {tuple(scan_shape)}"
        )
    return int(k)


def reflect_index(idx: np.ndarray | int, n: int) -> np.ndarray:
    """Map indices outside [0, n) into it like ``np.pad(mode="reflect")`` (no edge repeat)."""
    idx = np.asarray(idx, dtype=np.int64)
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    m = np.mod(idx, period)
    return np.where(m < n, m, period - m)


def cluster_indices(
    ys: np.ndarray, xs: np.ndarray, k: int, scan_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Reflected row indices ``(B, K)`` and column indices ``(B, K)`` of the clusters at
    positions ``ys``, ``xs`` (each ``(B,)``)."""
    h = k // 2
    off = np.arange(-h, h + 1)
    ry = reflect_index(np.asarray(ys)[:, None] + off[None, :], scan_shape[0])
    rx = reflect_index(np.asarray(xs)[:, None] + off[None, :], scan_shape[1])
    return ry, rx


# ---------------------------------------------------------------------------------------------
# region splits
# ---------------------------------------------------------------------------------------------
Rect = tuple[int, int, int, int]


def _rect_mask(rect: Rect, scan_shape: tuple[int, int], name: str) -> np.ndarray:
    if len(rect) != 4:
        raise SplitError(f"{name} must be a rectangle (y0, y1, x0, x1), got {rect!r}")
    y0, y1, x0, x1 = (int(v) for v in rect)
    ny, nx = scan_shape
    if not (0 <= y0 < y1 <= ny and 0 <= x0 < x1 <= nx):
        raise SplitError(
            f"{name} rectangle (y0, y1, x0, x1) = {tuple(rect)} is empty or outside the "
            f"{ny} × {nx} scan (half-open, 0 <= y0 < y1 <= {ny}, 0 <= x0 < x1 <= {nx})"
        )
    m = np.zeros(scan_shape, bool)
    m[y0:y1, x0:x1] = True
    return m


@dataclass(frozen=True)
class RegionSplit:
    """Which scan positions train and which validate.

    Regions are given as rectangles ``(y0, y1, x0, x1)`` (half-open, scan positions) or boolean
    masks ``(Ny, Nx)``; a mask wins over a rectangle. Without either, the first
    ``train_fraction`` of the rows (the upper part) trains and the rest validates
    (``axis=1``: left/right by columns). ``val`` may be left out when ``train`` is given: it is
    then the complement of ``train``. A position belongs to a region only if its whole K×K
    cluster (after reflection at the data edges) lies in that region, so clusters that
    straddle the border belong to neither and no pattern is used by both sides.
    """

    train: Rect | None = None
    val: Rect | None = None
    train_fraction: float = 0.5
    axis: int = 0
    train_mask: np.ndarray | None = field(default=None, compare=False, repr=False)
    val_mask: np.ndarray | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < float(self.train_fraction) < 1:
            raise SplitError(f"train_fraction must be in (0, 1), got {self.train_fraction!r}")
        if self.axis not in (0, 1):
            raise SplitError(f"axis must be 0 (rows) or 1 (columns), got {self.axis!r}")
        for name in ("train", "val"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, tuple(int(x) for x in v))

    def region_masks(self, scan_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Boolean ``(Ny, Nx)`` train and validation regions (disjoint)."""
        scan_shape = (int(scan_shape[0]), int(scan_shape[1]))

        def given(mask, rect, name):
            if mask is not None:
                m = np.asarray(mask, bool)
                if m.shape != scan_shape:
                    raise SplitError(f"{name}_mask must have the scan shape {scan_shape}, got {m.shape}")
                return m
            return None if rect is None else _rect_mask(rect, scan_shape, name)

        tr = given(self.train_mask, self.train, "train")
        va = given(self.val_mask, self.val, "val")
        if tr is None and va is None:
            n = scan_shape[self.axis]
            cut = min(n - 1, max(1, int(round(n * float(self.train_fraction)))))
            tr = np.zeros(scan_shape, bool)
            if self.axis == 0:
                tr[:cut] = True
            else:
                tr[:, :cut] = True
            va = ~tr
        elif va is None:
            va = ~tr
        elif tr is None:
            tr = ~va
        if np.any(tr & va):
            raise SplitError("the training and validation regions overlap")
        return tr, va

    def positions(
        self, scan_shape: tuple[int, int], k: int, coverage: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Boolean ``(Ny, Nx)`` masks of the training and validation cluster centres.

        A centre qualifies when its whole reflected K×K cluster lies in the region and, with
        ``coverage`` (the label's valid positions), when its own label is covered.
        """
        check_cluster_size(k, scan_shape)
        tr, va = self.region_masks(scan_shape)
        out = []
        for region in (tr, va):
            ok = _whole_cluster_inside(region, k)
            if coverage is not None:
                cov = np.asarray(coverage, bool)
                if cov.shape != tuple(scan_shape):
                    raise SplitError(
                        f"label coverage mask must have the scan shape {tuple(scan_shape)}, "
                        f"got {cov.shape}"
                    )
                ok &= cov
            out.append(ok)
        return out[0], out[1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description (masks as their number of True positions)."""
        return {
            "train": list(self.train) if self.train else None,
            "val": list(self.val) if self.val else None,
            "train_fraction": float(self.train_fraction),
            "axis": int(self.axis),
            "train_mask": None if self.train_mask is None else int(np.count_nonzero(self.train_mask)),
            "val_mask": None if self.val_mask is None else int(np.count_nonzero(self.val_mask)),
        }


def _whole_cluster_inside(region: np.ndarray, k: int) -> np.ndarray:
    """True where the reflected K×K cluster lies entirely inside ``region``."""
    h = k // 2
    if h == 0:
        return region.copy()
    padded = np.pad(region, h, mode="reflect")
    win = np.lib.stride_tricks.sliding_window_view(padded, (k, k))
    return win.all(axis=(-2, -1))


# ---------------------------------------------------------------------------------------------
# preprocessed patterns, cached or gathered per batch
# ---------------------------------------------------------------------------------------------
def _gather(data: Any, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Raw patterns at positions (ys[i], xs[i]) → ``(n, ky, kx)``, reading only those."""
    if type(data).__module__.startswith("dask"):
        return np.asarray(data.vindex[ys, xs].compute())
    if isinstance(data, np.ndarray):  # includes np.memmap
        return np.asarray(data[ys, xs])
    return np.stack([np.asarray(data[int(y), int(x)]) for y, x in zip(ys, xs)])


@dataclass(frozen=True)
class CacheProgress:
    """Progress of filling the preprocessed cache: ``rows_done`` of ``rows_total``."""

    rows_done: int
    rows_total: int


class PatternSource:
    """Preprocessed patterns of ``dataset`` with ``preprocessor`` (already adapted to it).

    Positions are on the *model's* scan grid: the data set's own grid, or, when the model's
    scan step differs from the data's (:meth:`Preprocessor.scan_grid`), a resampled grid whose
    patterns are bilinear interpolations of the data's (``grid``; ``scan_shape`` is then the
    resampled shape). With ``cache_budget_bytes`` large enough for the preprocessed field
    (float32 ``Ny·Nx·oy·ox·4`` bytes), :meth:`fill_cache` preprocesses it once; otherwise every
    call reads just the patterns it needs from the (lazy) data. ``stage="linear"`` serves
    linear intensities (``Preprocessor.transform(..., stage="linear")``) instead of the
    model's input.
    """

    def __init__(
        self,
        dataset: Dataset4D,
        preprocessor: Preprocessor,
        *,
        cache_budget_bytes: float = 2e9,
        stage: str = "model",
    ) -> None:
        if stage not in ("model", "linear"):
            raise ValueError(f"stage must be 'model' or 'linear', got {stage!r}")
        self.dataset = dataset
        self.preprocessor = preprocessor
        self.stage = stage
        self.grid = preprocessor.scan_grid(dataset.scan_shape)
        self.scan_shape = self.grid.shape if self.grid is not None else tuple(dataset.scan_shape)
        self.pattern_shape = tuple(preprocessor.output_shape)
        ny, nx = self.scan_shape
        self.cache_nbytes = ny * nx * int(np.prod(self.pattern_shape)) * 4
        self.use_cache = self.cache_nbytes <= cache_budget_bytes
        self.cache: np.ndarray | None = None

    def fill_cache(self, rows_per_chunk: int | None = None) -> Iterator[CacheProgress]:
        """Preprocess the whole field into the cache (if it fits), yielding progress."""
        if not self.use_cache or self.cache is not None:
            return
        ny, nx = self.scan_shape
        ky, kx = self.dataset.detector_shape
        if rows_per_chunk is None:
            row_bytes = self.dataset.scan_shape[1] * ky * kx * max(4, self.dataset.dtype.itemsize)
            rows_per_chunk = max(1, int(64e6 // max(row_bytes, 1)))
        cache = np.empty((ny, nx, *self.pattern_shape), np.float32)
        for y0 in range(0, ny, rows_per_chunk):
            y1 = min(ny, y0 + rows_per_chunk)
            cache[y0:y1] = self._read_rows(np.arange(y0, y1))
            yield CacheProgress(y1, ny)
        self.cache = cache

    def _read_rows(self, ys: np.ndarray) -> np.ndarray:
        """Preprocessed model-grid rows ``ys`` (sorted, unique) from the data."""
        data = self.dataset.data
        pre = self.preprocessor
        stage = self.stage
        if self.grid is None:
            lo, hi = int(ys[0]), int(ys[-1]) + 1
            if hi - lo <= 2 * len(ys):  # contiguous enough: one slice read
                return pre.transform(np.asarray(data[lo:hi])[ys - lo], stage=stage)
            return np.stack([pre.transform(np.asarray(data[int(y)]), stage=stage) for y in ys])
        g = self.grid
        i0, i1, wy = g.taps(0, ys)
        j0, j1, wx = g.taps(1, np.arange(self.scan_shape[1]))
        need = np.unique(np.concatenate([i0, i1]))
        lo, hi = int(need[0]), int(need[-1]) + 1
        if hi - lo <= 2 * len(need):
            raw = np.asarray(data[lo:hi])[need - lo]
        else:
            raw = np.stack([np.asarray(data[int(y)]) for y in need])
        lin = pre.transform(raw, stage="linear")  # (n_need, Nx_data, oy, ox)
        pos = {int(v): i for i, v in enumerate(need)}
        a = lin[[pos[int(v)] for v in i0]]
        b = lin[[pos[int(v)] for v in i1]]
        w = wy.astype(np.float32)[:, None, None, None]
        rows = a * (1 - w) + b * w
        wx32 = wx.astype(np.float32)[None, :, None, None]
        rows = rows[:, j0] * (1 - wx32) + rows[:, j1] * wx32
        return rows if stage == "linear" else pre.finish(rows)

    def rows(self, ys: np.ndarray) -> np.ndarray:
        """Preprocessed scan rows ``ys`` (any order, repeats allowed) → ``(n, Nx, oy, ox)``."""
        ys = np.asarray(ys, dtype=np.int64)
        if self.cache is not None:
            return self.cache[ys]
        uniq, inv = np.unique(ys, return_inverse=True)
        return self._read_rows(uniq)[inv]

    def _points(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Preprocessed patterns at positions (ys[i], xs[i]) → ``(n, oy, ox)`` (no cache)."""
        if self.grid is not None:  # interpolated grid: read the rows the points lie on
            uy, inv = np.unique(ys, return_inverse=True)
            return self._read_rows(uy)[inv, xs]
        nx = self.scan_shape[1]
        flat = ys * nx + xs
        uniq, inv = np.unique(flat, return_inverse=True)
        raw = _gather(self.dataset.data, uniq // nx, uniq % nx)
        return self.preprocessor.transform(raw, stage=self.stage)[inv]

    def clusters(self, ys: np.ndarray, xs: np.ndarray, k: int) -> np.ndarray:
        """K×K clusters around positions (ys, xs) → float32 ``(B, K, K, oy, ox)``."""
        ry, rx = cluster_indices(ys, xs, k, self.scan_shape)
        iy = np.broadcast_to(ry[:, :, None], (len(ry), k, k))
        ix = np.broadcast_to(rx[:, None, :], (len(rx), k, k))
        if self.cache is not None:
            return self.cache[iy, ix]
        pats = self._points(iy.ravel(), ix.ravel())
        return pats.reshape(len(ry), k, k, *self.pattern_shape)

    def rect(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Preprocessed patterns on the grid ``ys × xs`` (any order, repeats allowed) → a new
        float32 array ``(len(ys), len(xs), oy, ox)``."""
        ys = np.asarray(ys, dtype=np.int64)
        xs = np.asarray(xs, dtype=np.int64)
        if self.cache is not None:
            return self.cache[np.ix_(ys, xs)]
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        pats = self._points(yy.ravel(), xx.ravel())
        return np.asarray(pats, np.float32).reshape(len(ys), len(xs), *self.pattern_shape)

    def padded_tile(self, y0: int, y1: int, k: int) -> np.ndarray:
        """Rows ``y0:y1`` with a K//2 reflected halo on all sides →
        ``(y1 - y0 + K - 1, Nx + K - 1, oy, ox)``, the input of ``model.predict_field``."""
        h = k // 2
        ny, nx = self.scan_shape
        ry = reflect_index(np.arange(y0 - h, y1 + h), ny)
        rows = self.rows(ry)
        if h == 0:
            return rows
        rx = reflect_index(np.arange(-h, nx + h), nx)
        return rows[:, rx]


def default_tile_rows(source: PatternSource, k: int, budget_bytes: float = 256e6) -> int:
    """Rows per prediction tile so that a padded tile stays within ``budget_bytes``."""
    nx = source.scan_shape[1]
    row_bytes = (nx + k - 1) * int(np.prod(source.pattern_shape)) * 4
    return max(1, int(math.floor(budget_bytes / max(row_bytes, 1))) - (k - 1))
