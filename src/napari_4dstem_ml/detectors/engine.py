"""Streaming virtual-detector engine.

``virtual_images(data, masks)`` returns ``(n_masks, scan_y, scan_x)`` float32 with
``image[m, y, x] = sum_k masks[m, k] * data[y, x, k]`` (a 2D mask gives a 2D image).

How it streams: one pass over the data in bands of scan rows (about 64 MB each, aligned to the
storage chunks), all masks at once; each mask is restricted to the detector rows it touches:

* the plan is the one of least estimated compute cost (``_choose_plan``): for float32 data and
  one mask, a BLAS matrix-vector product (memory-bound); otherwise the cheapest of a BLAS product
  ``(patterns × pixels) @ (pixels × masks)`` (float32), a parallel numba kernel fusing the cast
  and the masked dot over each mask's bounding detector rows (re-associated float32 sums, see
  ``_kernels``), and, for masks made of runs of constant weight (binary disks and annuli), sums
  over the runs: row spans summed directly, or column runs taken from per-column prefix sums
  (many thin annuli). Run sums of integer data (up to 32 bits) with binary / small-integer masks
  are exact integers rounded once to float32; float data is summed in float64. Row spans are
  summed for four patterns at a time (loop overhead shared, independent add chains); column
  runs prefetch the next pattern. Byte-swapped data is cast in
  cache-sized blocks for BLAS;
* NumPy arrays and read-only memmaps are read in place; for a mapping larger than
  ``RELEASE_BYTES`` (512 MiB) the mapped pages are released after each band (resident
  memory stays bounded; the page cache keeps them), smaller ones stay mapped so that repeated runs
  do not fault them in again; uncompressed HDF5 datasets are memory-mapped directly from
  their file offsets (contiguous layout, or chunks holding whole patterns); other HDF5 datasets,
  Dask arrays and anything sliceable are read band by band, one band ahead in a background thread.

Per-position centres (descan): pass ``centres`` (a :class:`~.centre.DescanFit` or per-position
``(cy, cx)`` maps). Positions are grouped by their shift from ``reference_centre`` (the centre the
masks were drawn for) rounded to ``shift_step`` px, and each group gets the masks shifted by its
rounded shift (exact array shifts for whole pixels; bilinear interpolation for fractional steps).
Mask edges are therefore placed to within ``shift_step / 2`` px per axis of the true centre.
A shifted mask keeps only the part that lies on the detector: where the shift moves part of a
detector past the detector's edge, that part reads nothing (there are no data there).
This path uses a sparse numba kernel (mask → row runs of nonzero pixels).

Accuracy: BLAS and the fused kernel use float32 products and float32 accumulation (relative error
against a float64 reference ~1e-6 on 128×128 patterns; a NaN/inf anywhere in a mask's bounding
rows reaches its image, as 0 × inf is NaN); run sums are exact for integer data and float64 for
float data, and keep NaN/inf to the masks that contain them.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: target size of one band of scan rows read at a time
BAND_BYTES = 64 * 2**20
#: float32 cast buffer for non-float32 data (per sub-block; stays in the last-level cache)
CAST_BYTES = 4 * 2**20
_PAGE = mmap.PAGESIZE


class EngineError(ValueError):
    """Bad input to the virtual-detector engine (shapes, dtypes, centres)."""


@dataclass(frozen=True)
class VirtualImageProgress:
    """Progress of :func:`iter_virtual_images`: ``rows_done`` of ``rows_total`` scan rows.

    ``image`` is the output being filled (``(n_masks, Ny, Nx)``, or ``(Ny, Nx)`` for one 2D
    mask); rows not yet done are 0. The same array object is yielded every time.
    """

    rows_done: int
    rows_total: int
    image: np.ndarray = field(compare=False, repr=False)

    @property
    def fraction(self) -> float:
        return self.rows_done / max(self.rows_total, 1)

    @property
    def done(self) -> bool:
        return self.rows_done >= self.rows_total


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------
def virtual_images(
    data: Any,
    masks: np.ndarray,
    *,
    centres: Any = None,
    reference_centre: tuple[float, float] | None = None,
    shift_step: float = 1.0,
    rows_per_chunk: int | None = None,
    step: int = 1,
    clip_negative: bool = False,
) -> np.ndarray:
    """Virtual images of ``data`` ``(Ny, Nx, ky, kx)`` for ``masks`` ``(n, ky, kx)`` or ``(ky, kx)``.

    Returns float32 ``(n, Ny, Nx)`` (``(Ny, Nx)`` for a 2D mask). ``step`` > 1 computes only every
    ``step``-th scan row and column (a quick preview: shape ``ceil(N / step)``). See the module
    docstring for ``centres`` / ``reference_centre`` / ``shift_step`` (descan) and the streaming.
    ``clip_negative``: negative pixel values count as 0 (NaN stays NaN), in the same pass: the
    readout of a model whose preprocessing clips them (float data only; integers as they are).
    """
    events = iter_virtual_images(
        data,
        masks,
        centres=centres,
        reference_centre=reference_centre,
        shift_step=shift_step,
        rows_per_chunk=rows_per_chunk,
        step=step,
        clip_negative=clip_negative,
    )
    image = next(events).image
    for _ in events:
        pass
    return image


def preview_virtual_images(data: Any, masks: np.ndarray, step: int = 4, **kwargs: Any) -> np.ndarray:
    """Virtual images on every ``step``-th scan row and column (for live editing on big data)."""
    return virtual_images(data, masks, step=step, **kwargs)


def iter_virtual_images(
    data: Any,
    masks: np.ndarray,
    *,
    centres: Any = None,
    reference_centre: tuple[float, float] | None = None,
    shift_step: float = 1.0,
    rows_per_chunk: int | None = None,
    step: int = 1,
    clip_negative: bool = False,
) -> Iterator[VirtualImageProgress]:
    """Generator form of :func:`virtual_images`: yields a :class:`VirtualImageProgress` per band.

    The first event comes before any work (0 rows done); the last has ``rows_done == rows_total``.
    """
    shape = _check_data(data)
    step = int(step)
    if step < 1:
        raise EngineError(f"step must be a positive integer, got {step!r}")
    m3, single = _prepare_masks(masks, shape[2:])
    src = data if step == 1 else _Strided(data, step)
    ny, nx = int(src.shape[0]), int(src.shape[1])
    out = np.zeros((len(m3), ny, nx), np.float32)
    image = out[0] if single else out
    dtype = np.dtype(data.dtype)
    if clip_negative and dtype.kind in "fi":
        if centres is not None:
            raise EngineError("clip_negative does not follow per-position centres")
        plan: _Plan = _FusedPlan(m3, clip_negative=True)
    elif centres is None:
        plan = _choose_plan(m3, dtype)
    else:
        cmap = _centre_maps(centres, shape[:2])
        if step > 1:
            cmap = cmap[:, ::step, ::step]
        plan = _RunsPlan(m3, cmap, reference_centre, shift_step)
    yield VirtualImageProgress(0, ny, image)
    for y0, y1, tiles in _bands(src, rows_per_chunk):
        for x0, x1, block, release in tiles:
            plan.apply(block, out[:, y0:y1, x0:x1], y0, x0)
            if release is not None:
                release()
        yield VirtualImageProgress(y1, ny, image)


def mean_pattern(data: Any, *, step: int = 1, rows_per_chunk: int | None = None) -> np.ndarray:
    """Mean diffraction pattern ``(ky, kx)`` float64 over the scan (every ``step``-th position).

    Patterns holding NaN/inf values are left out (a second pass, only when the plain mean is
    not finite); NaN everywhere when no pattern is finite."""
    _check_data(data)
    src = data if int(step) == 1 else _Strided(data, int(step))
    total = np.zeros(tuple(int(n) for n in src.shape[2:]), np.float64)
    count = 0
    for finite_only in (False, True):
        total[...] = 0
        count = 0
        for _y0, _y1, tiles in _bands(src, rows_per_chunk):
            for _x0, _x1, block, release in tiles:
                if finite_only:
                    ok = np.isfinite(block).all(axis=(2, 3))
                    total += np.sum(block[ok], axis=0, dtype=np.float64)
                    count += int(ok.sum())
                else:
                    total += np.sum(block, axis=(0, 1), dtype=np.float64)
                    count += block.shape[0] * block.shape[1]
                if release is not None:
                    release()
        if np.isfinite(total).all() or np.dtype(src.dtype).kind != "f":
            return total / max(count, 1)
    return total / count if count else np.full_like(total, np.nan)


# ---------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------
def _check_data(data: Any) -> tuple[int, int, int, int]:
    shape = getattr(data, "shape", None)
    if shape is None or len(shape) != 4:
        raise EngineError(f"data must be 4D (scan_y, scan_x, ky, kx), got shape {shape!r}")
    dt = np.dtype(getattr(data, "dtype", np.float32))
    if dt.kind not in "biuf":
        raise EngineError(f"data must be real numbers (int, uint, float), got dtype {dt}")
    return tuple(int(n) for n in shape)  # type: ignore[return-value]


def _prepare_masks(masks: Any, det_shape: tuple[int, ...]) -> tuple[np.ndarray, bool]:
    m = np.asarray(masks)
    if m.dtype.kind not in "biuf":
        raise EngineError(f"masks must be real numbers, got dtype {m.dtype}")
    single = m.ndim == 2
    if single:
        m = m[None]
    if m.ndim != 3 or tuple(m.shape[1:]) != tuple(det_shape):
        raise EngineError(
            f"masks must be (ky, kx) or (n, ky, kx) with (ky, kx) = {tuple(det_shape)}, "
            f"got shape {np.shape(masks)}"
        )
    if len(m) == 0:
        raise EngineError("need at least one mask")
    return np.ascontiguousarray(m, dtype=np.float32), single


def _centre_maps(centres: Any, scan_shape: tuple[int, int]) -> np.ndarray:
    """(2, Ny, Nx) float64 per-position centres from a DescanFit or arrays."""
    if hasattr(centres, "centres"):
        cy, cx = centres.centres(scan_shape)
        c = np.stack([np.asarray(cy), np.asarray(cx)])
    else:
        c = np.asarray(centres, dtype=np.float64)
        if c.ndim == 3 and c.shape[-1] == 2 and c.shape[0] != 2:
            c = np.moveaxis(c, -1, 0)
    if c.shape != (2, *scan_shape):
        raise EngineError(
            f"centres must be a DescanFit or (cy, cx) maps of the scan shape {scan_shape}, "
            f"got shape {c.shape}"
        )
    if not np.all(np.isfinite(c)):
        raise EngineError("centres contain NaN or infinite values")
    return c.astype(np.float64)


# ---------------------------------------------------------------------------------------------
# compute plans
# ---------------------------------------------------------------------------------------------
class _Plan:
    def apply(self, block: np.ndarray, out: np.ndarray, y0: int, x0: int) -> None:
        raise NotImplementedError


def _kernels():
    from . import _kernels

    return _kernels


def _patterns_2d(block: np.ndarray) -> np.ndarray:
    """``(a, b, ky, kx)`` → ``(a*b, ky, kx)`` without copying when possible."""
    a, b, ky, kx = block.shape
    if not block.flags.c_contiguous:
        block = np.ascontiguousarray(block)
    return block.reshape(a * b, ky, kx)


class _DensePlan(_Plan):
    """All masks as one matrix, cropped to the detector rows they touch; BLAS does the product."""

    def __init__(self, m3: np.ndarray) -> None:
        n, ky, kx = m3.shape
        rows = np.flatnonzero(np.any(m3 != 0, axis=(0, 2)))
        self.r0, self.r1 = (int(rows[0]), int(rows[-1]) + 1) if rows.size else (0, 0)
        self.kx = kx
        self.n = n
        self.wt = np.ascontiguousarray(m3[:, self.r0 : self.r1, :].reshape(n, -1).T)  # (K', n)
        self._buf: np.ndarray | None = None

    def apply(self, block: np.ndarray, out: np.ndarray, y0: int, x0: int) -> None:
        a, b = block.shape[:2]
        if self.r1 == self.r0 or a * b == 0:
            out[...] = 0
            return
        p3 = _patterns_2d(block)
        p = p3.shape[0]
        kc = (self.r1 - self.r0) * self.kx
        res = np.empty((p, self.n), np.float32)
        dt = p3.dtype
        if dt == np.float32 and dt.isnative:
            flat = p3.reshape(p, -1)[:, self.r0 * self.kx : self.r1 * self.kx]
            with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf data stay NaN/inf
                if self.n == 1:  # matrix-vector (gemv): sgemm with one column packs the data
                    np.matmul(flat, self.wt[:, 0], out=res[:, 0])
                else:
                    np.matmul(flat, self.wt, out=res)
        else:
            sub = max(1, CAST_BYTES // (4 * kc))
            if self._buf is None or self._buf.shape[1] != kc:
                self._buf = np.empty((sub, kc), np.float32)
            buf = self._buf
            buf3 = buf.reshape(len(buf), self.r1 - self.r0, self.kx)
            numba_ok = dt.isnative and dt.kind in "iuf"
            cast = _kernels().cast_rows if numba_ok else None
            for s in range(0, p, sub):
                e = min(p, s + sub)
                if cast is not None:
                    cast(p3[s:e], self.r0, buf3)
                else:
                    buf[: e - s] = p3[s:e, self.r0 : self.r1].reshape(e - s, kc)
                if self.n == 1:
                    np.matmul(buf[: e - s], self.wt[:, 0], out=res[s:e, 0])
                else:
                    np.matmul(buf[: e - s], self.wt, out=res[s:e])
        out[...] = res.T.reshape(self.n, a, b)


def _shift_mask(mask: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """Mask moved by (dy, dx) px, zero-filled: exact for whole pixels, bilinear otherwise."""
    if dy == int(dy) and dx == int(dx):
        dy, dx = int(dy), int(dx)
        ky, kx = mask.shape
        out = np.zeros_like(mask)
        ys, yd = (slice(0, ky - dy), slice(dy, ky)) if dy >= 0 else (slice(-dy, ky), slice(0, ky + dy))
        xs, xd = (slice(0, kx - dx), slice(dx, kx)) if dx >= 0 else (slice(-dx, kx), slice(0, kx + dx))
        out[yd, xd] = mask[ys, xs]
        return out
    from scipy import ndimage

    return ndimage.shift(mask, (dy, dx), order=1, mode="constant", cval=0.0).astype(np.float32)


def _mask_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Row runs of nonzero pixels: (row, col_start, length) and their weights in run order."""
    nz = mask != 0
    pad = np.zeros((nz.shape[0], nz.shape[1] + 2), np.int8)
    pad[:, 1:-1] = nz
    d = np.diff(pad, axis=1)
    sr, sc = np.nonzero(d == 1)
    _er, ec = np.nonzero(d == -1)
    lens = ec - sc
    weights = mask[nz]  # row-major order == run order
    return sr.astype(np.int64), sc.astype(np.int64), lens.astype(np.int64), weights


#: estimated compute cost, in CPU cycles per pattern per pixel (or per run), of each plan; from
#: in-cache single-core timings on 128×128 patterns (AMD Zen 4). Only the ranking matters.
FUSED_PX_CYCLES = {1: 0.2, 2: 0.2, 4: 0.37, 8: 0.6}  # fused dense kernel, per bounding-row pixel
BLAS_PX_CYCLES = 0.14  # sgemm, per pixel per mask (float32 data, several masks)
# row-span sums, per summed pixel: exact integer sums, float data in float64, integer data with
# non-integer weights in float64 (a conversion per pixel: 0.080 s against the fused kernel's
# 0.047 s for one weighted annulus on uint16, same data as below)
SPAN_PX_CYCLES = {"int": 0.12, "float": 0.25, "int_as_float": 0.4}
# ... and per span (loop set-up, an unpredictable loop exit; shared by four patterns). Measured
# on 0.5 GB in RAM, 2 threads: row spans beat column runs and the fused kernel for one annulus
# and for ten thin annuli, on uint16 (0.032 / 0.053 / 0.044 s; 0.052 / 0.085 / 0.114 s) and on
# float32 (0.061 / 0.099 / 0.066 s; 0.072 / 0.125 / 0.171 s)
SPAN_CYCLES = 3.0
PREFIX_PX_CYCLES = {4: 0.25, 8: 0.45}  # column prefix sums (int32 / int64, float64), per pixel
COLUMN_RUN_CYCLES = 5.5  # ... and per column run (two gathered prefix values)


class _FusedPlan(_Plan):
    """Non-float32 data: fused cast + dense dot per mask over its bounding detector rows (numba).

    Each pattern is read from memory once; the cast never leaves the registers."""

    def __init__(self, m3: np.ndarray, clip_negative: bool = False) -> None:
        n, ky, kx = m3.shape
        self.n = n
        self.clip_negative = clip_negative
        lo, length, woff, ws, off = [], [], [], [], 0
        for m in m3:
            rows = np.flatnonzero(np.any(m != 0, axis=1))
            r0, r1 = (int(rows[0]), int(rows[-1]) + 1) if rows.size else (0, 0)
            lo.append(r0 * kx)
            length.append((r1 - r0) * kx)
            woff.append(off)
            ws.append(m[r0:r1].ravel())
            off += (r1 - r0) * kx
        self.lo = np.asarray(lo, np.int64)
        self.length = np.asarray(length, np.int64)
        self.woff = np.asarray(woff, np.int64)
        self.weights = np.ascontiguousarray(np.concatenate(ws), dtype=np.float32)

    @staticmethod
    def cost(m3: np.ndarray, dtype: np.dtype) -> float:
        """Estimated cycles per pattern: each mask over its bounding detector rows."""
        rows = np.any(m3 != 0, axis=2)  # (n, ky)
        total = 0
        for r in rows:
            idx = np.flatnonzero(r)
            total += (idx[-1] + 1 - idx[0]) * m3.shape[2] if idx.size else 0
        return total * FUSED_PX_CYCLES.get(dtype.itemsize, 0.6)

    def apply(self, block: np.ndarray, out: np.ndarray, y0: int, x0: int) -> None:
        flat = _flat_patterns(block, self.n)
        if flat is None:
            return
        p2, res = flat
        k = _kernels()
        dots = k.masked_dots_clipped if self.clip_negative else k.masked_dots
        dots(p2, self.lo, self.length, self.woff, self.weights, res)
        out[...] = res.reshape(out.shape)


def _flat_patterns(block: np.ndarray, n_masks: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A band ``(a, b, ky, kx)`` as patterns × pixels, and an empty ``(n_masks, a·b)`` float32
    result for the kernels; ``None`` for an empty band."""
    a, b = block.shape[:2]
    if a * b == 0:
        return None
    p3 = _patterns_2d(block)
    return p3.reshape(p3.shape[0], -1), np.empty((n_masks, a * b), np.float32)


def _blas_px(m3: np.ndarray) -> int:
    """Pixels the BLAS product multiplies: masks × their union of bounding detector rows."""
    rows = np.flatnonzero(np.any(m3 != 0, axis=(0, 2)))
    return len(m3) * ((int(rows[-1]) + 1 - int(rows[0])) * m3.shape[2] if rows.size else 0)


def _choose_plan(m3: np.ndarray, dtype: np.dtype | None = None) -> _Plan:
    """The plan of least estimated compute cost for these masks and this data dtype.

    float32 data and one mask: BLAS matrix-vector product (memory-bound). Otherwise, for native
    numeric dtypes, the cheapest of: the BLAS product ``(patterns × pixels) @ (pixels × masks)``
    (float32 only), the fused cast + dense dot kernel (each mask over its bounding detector rows),
    row-span sums and column-run sums (:class:`_RunSumPlan`: masks made of runs of constant
    weight, e.g. binary disks and annuli; exact integer sums for integer data). Anything else
    (byte-swapped data) is cast in cache-sized blocks and goes to BLAS.
    """
    if dtype is None or not (dtype.isnative and dtype.kind in "iuf"):
        return _DensePlan(m3)
    if dtype == np.float32 and len(m3) == 1:
        return _DensePlan(m3)  # gemv: memory-bound
    options: list[tuple[float, Callable[[], _Plan]]] = [
        (_FusedPlan.cost(m3, dtype), lambda: _FusedPlan(m3))
    ]
    if dtype == np.float32:
        options.append((BLAS_PX_CYCLES * _blas_px(m3), lambda: _DensePlan(m3)))
    for mode in ("rows", "columns"):
        options.append(
            (_RunSumPlan.cost(m3, dtype, mode), lambda mode=mode: _RunSumPlan(m3, dtype, mode))
        )
    return min(options, key=lambda o: o[0])[1]()


def _runs_along_rows(m2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of equal nonzero value along the rows of ``m2``: (flat start, length, value)."""
    rows, cols = m2.shape
    change = np.ones(m2.shape, bool)
    change[:, 1:] = m2[:, 1:] != m2[:, :-1]
    pos = np.flatnonzero(change)
    ends = np.append(pos[1:], rows * cols)  # every row start is a change: runs end at row ends
    keep = m2.ravel()[pos] != 0
    return pos[keep], (ends - pos)[keep], m2.ravel()[pos[keep]]


def _run_count(m3: np.ndarray, axis: int) -> int:
    """Runs of equal nonzero value along ``axis`` (1: detector columns, 2: rows) of all masks."""
    nz = m3 != 0
    same = np.zeros(m3.shape, bool)
    if axis == 2:
        same[..., 1:] = m3[..., 1:] == m3[..., :-1]
    else:
        same[:, 1:] = m3[:, 1:] == m3[:, :-1]
    return int(np.count_nonzero(nz & ~same))


class _RunSumPlan(_Plan):
    """Masks as runs of constant weight (binary disks, annuli, ...): sums over the runs.

    ``mode="rows"``: each run is a contiguous span of a detector row, summed directly (kernel
    ``span_sums``); ``mode="columns"``: runs along detector columns, each the difference of two
    per-column prefix sums built once per pattern (kernel ``column_run_sums``; cheaper for many
    thin annuli, whose row spans are short). Integer data (up to 32 bits) with small integer
    weights (binary masks) is summed exactly in integers and rounded once to float32; float data
    is summed in float64. For float data, a band whose column-prefix result is not finite is
    recomputed with row spans (a NaN or inf would poison the rest of its column); row spans keep
    NaN and inf to the masks that contain them.
    """

    def __init__(self, m3: np.ndarray, dtype: np.dtype, mode: str) -> None:
        n, ky, kx = m3.shape
        self.n, self.kx, self.mode, self.m3 = n, kx, mode, m3
        self.exact = _integer_exact(m3, dtype)
        wdt = np.int64 if self.exact else np.float64
        rows = np.flatnonzero(np.any(m3 != 0, axis=(0, 2)))
        self.r0, self.r1 = (int(rows[0]), int(rows[-1]) + 1) if rows.size else (0, 0)
        nr = self.r1 - self.r0
        lo, hi, ws, ptr = [], [], [], [0]
        for m in m3:
            if mode == "rows":
                pos, ln, w = _runs_along_rows(m)
                lo.append(pos)
                hi.append(ln)  # span lengths
            else:
                pos, ln, w = _runs_along_rows(np.ascontiguousarray(m[self.r0 : self.r1].T))
                col, a = np.divmod(pos, max(nr, 1))
                lo.append(a * kx + col)
                hi.append((a + ln) * kx + col)
            ws.append(w)
            ptr.append(ptr[-1] + len(pos))
        self.lo = np.concatenate(lo).astype(np.int64)
        self.hi = np.concatenate(hi).astype(np.int64)
        self.w = np.concatenate(ws).astype(wdt)
        self.ptr = np.asarray(ptr, np.int64)
        if mode == "rows":  # all masks' spans in memory order
            self.midx = np.repeat(np.arange(n, dtype=np.int64), np.diff(self.ptr))
            order = np.argsort(self.lo, kind="stable")
            self.lo, self.hi, self.w, self.midx = (
                np.ascontiguousarray(v[order]) for v in (self.lo, self.hi, self.w, self.midx)
            )
        self.tot_proto = np.zeros(1, wdt)
        if dtype.kind == "f":
            self.proto = np.zeros(1, np.float64)
        else:
            self.proto = np.zeros(1, np.int32 if dtype.itemsize <= 2 and ky < 2**15 else np.int64)
        self._fallback: _Plan | None = None

    @staticmethod
    def cost(m3: np.ndarray, dtype: np.dtype, mode: str) -> float:
        """Estimated cycles per pattern."""
        exact = _integer_exact(m3, dtype)
        if mode == "rows":
            kind = "int" if exact else "float" if dtype.kind == "f" else "int_as_float"
            n_px = np.count_nonzero(m3)
            return SPAN_PX_CYCLES[kind] * n_px + SPAN_CYCLES * _run_count(m3, 2)
        rows = np.flatnonzero(np.any(m3 != 0, axis=(0, 2)))
        nr = int(rows[-1]) + 1 - int(rows[0]) if rows.size else 0
        size = 4 if exact and dtype.itemsize <= 2 else 8
        return PREFIX_PX_CYCLES[size] * nr * m3.shape[2] + COLUMN_RUN_CYCLES * _run_count(m3, 1)

    def apply(self, block: np.ndarray, out: np.ndarray, y0: int, x0: int) -> None:
        flat = _flat_patterns(block, self.n)
        if flat is None:
            return
        p2, res = flat
        k = _kernels()
        if self.mode == "rows":
            k.span_sums(p2, self.lo, self.hi, self.w, self.midx, self.tot_proto, res)
        else:
            k.column_run_sums(p2, self.lo, self.hi, self.w, self.ptr, self.r0, self.r1 - self.r0,
                              self.kx, self.proto, res)
            if p2.dtype.kind == "f" and not np.isfinite(res).all():
                if self._fallback is None:
                    self._fallback = _RunSumPlan(self.m3, p2.dtype, "rows")
                self._fallback.apply(block, out, y0, x0)
                return
        out[...] = res.reshape(out.shape)


def _integer_exact(m3: np.ndarray, dtype: np.dtype) -> bool:
    """Integer data up to 32 bits and integer mask weights small enough that int64 sums of a
    whole pattern stay below 2**53 (exact in int64 and float64): the run kernels sum exactly."""
    if dtype.kind not in "iu" or dtype.itemsize > 4:
        return False
    w = np.abs(m3[m3 != 0]).astype(np.float64)
    if not np.all(w == np.round(w)):
        return False
    wmax = float(w.max()) if w.size else 0.0
    info = np.iinfo(dtype)
    return wmax * float(max(info.max, -int(info.min))) * m3[0].size < 2.0**53


class _RunsPlan(_Plan):
    """Sparse masks (row runs of nonzero pixels), optionally following per-position centres:
    positions grouped by rounded shift, each group with its shifted masks."""

    def __init__(
        self,
        m3: np.ndarray,
        cmap: np.ndarray | None,
        reference_centre: tuple[float, float] | None,
        shift_step: float,
    ) -> None:
        step = float(shift_step)
        if not step > 0:
            raise EngineError(f"shift_step must be positive (px), got {shift_step!r}")
        if cmap is None:
            self.group = None
            keys = np.zeros((1, 2), np.int64)
        elif reference_centre is None:
            ref = (float(cmap[0].mean()), float(cmap[1].mean()))
        else:
            ref = (float(reference_centre[0]), float(reference_centre[1]))
        if cmap is not None:
            qy = np.round((cmap[0] - ref[0]) / step).astype(np.int64)
            qx = np.round((cmap[1] - ref[1]) / step).astype(np.int64)
            keys, group = np.unique(
                np.stack([qy.ravel(), qx.ravel()], 1), axis=0, return_inverse=True
            )
            self.group = np.ascontiguousarray(group.reshape(qy.shape).astype(np.int64))
        self.n = len(m3)
        rows, cols, lens, woffs, ws, ptr = [], [], [], [], [], [0]
        off = 0
        for gy, gx in keys:
            for m in m3:
                r, c, ln, w = _mask_runs(_shift_mask(m, gy * step, gx * step))
                rows.append(r)
                cols.append(c)
                lens.append(ln)
                woffs.append(off + np.concatenate([[0], np.cumsum(ln)[:-1]]).astype(np.int64))
                ws.append(w)
                off += int(ln.sum())
                ptr.append(ptr[-1] + len(r))
        self.run_row = np.concatenate(rows)
        self.run_col = np.concatenate(cols)
        self.run_len = np.concatenate(lens)
        self.run_woff = np.concatenate(woffs) if woffs else np.zeros(0, np.int64)
        self.weights = np.concatenate(ws).astype(np.float32) if ws else np.zeros(0, np.float32)
        self.set_ptr = np.asarray(ptr, np.int64)
        self.n_groups = len(keys)

    def apply(self, block: np.ndarray, out: np.ndarray, y0: int, x0: int) -> None:
        a, b = block.shape[:2]
        blk = block if block.flags.c_contiguous else np.ascontiguousarray(block)
        if not (blk.dtype.isnative and blk.dtype.kind in "iuf"):
            blk = blk.astype(np.float32)
        if self.group is None:
            grp = np.zeros((a, b), np.int64)
        else:
            grp = np.ascontiguousarray(self.group[y0 : y0 + a, x0 : x0 + b])
        res = np.empty((self.n, a, b), np.float32)
        _kernels().runs_dot(
            blk, grp, self.run_row, self.run_col, self.run_len, self.run_woff, self.set_ptr,
            self.weights, self.n, res,
        )
        out[...] = res


# ---------------------------------------------------------------------------------------------
# sources: bands of scan rows, each a list of tiles (x0, x1, block, release)
# ---------------------------------------------------------------------------------------------
Tile = tuple[int, int, np.ndarray, "Callable[[], None] | None"]


class _Strided:
    """Every ``step``-th scan row and column of a sliceable 4D array (read row by row)."""

    def __init__(self, data: Any, step: int) -> None:
        self.data, self.step = data, step
        ny, nx = data.shape[:2]
        self.shape = (-(-ny // step), -(-nx // step), *data.shape[2:])
        self.dtype = np.dtype(data.dtype)

    def __getitem__(self, rows: slice) -> np.ndarray:
        y0, y1, _ = rows.indices(self.shape[0])
        s = self.step
        if isinstance(self.data, np.ndarray) or _is_dask(self.data):
            part = self.data[y0 * s : (y1 - 1) * s + 1 : s, ::s]
            return np.asarray(part.compute() if _is_dask(part) else part)
        return np.stack([np.asarray(self.data[y * s])[::s] for y in range(y0, y1)]) if y1 > y0 else (
            np.zeros((0, *self.shape[1:]), self.dtype)
        )


def _is_dask(x: Any) -> bool:
    return type(x).__module__.startswith("dask")


def _is_h5(x: Any) -> bool:
    return type(x).__module__.startswith("h5py")


def _row_bytes(shape: tuple[int, ...], dtype: Any) -> int:
    return int(np.prod(shape[1:])) * np.dtype(dtype).itemsize


def _rows_for(shape: tuple[int, ...], dtype: Any, rows_per_chunk: int | None, align: int = 1) -> int:
    if rows_per_chunk is not None:
        r = int(rows_per_chunk)
        if r < 1:
            raise EngineError(f"rows_per_chunk must be a positive integer, got {rows_per_chunk!r}")
        return r
    r = max(1, BAND_BYTES // max(_row_bytes(shape, dtype), 1))
    return max(align, (r // align) * align)


def _bands(data: Any, rows_per_chunk: int | None) -> Iterator[tuple[int, int, list[Tile]]]:
    if isinstance(data, np.ndarray):
        yield from _numpy_bands(data, rows_per_chunk)
    elif _is_h5(data):
        direct = _h5_direct(data)
        if isinstance(direct, np.ndarray):
            yield from _numpy_bands(direct, rows_per_chunk)
        elif direct is not None:
            yield from direct.bands(rows_per_chunk)
        else:
            yield from _h5_read_bands(data, rows_per_chunk)
    elif _is_dask(data):
        yield from _dask_bands(data, rows_per_chunk)
    else:
        ny = int(data.shape[0])
        rows = _rows_for(tuple(data.shape), data.dtype, rows_per_chunk)
        ranges = [(y, min(ny, y + rows)) for y in range(0, ny, rows)]
        yield from _prefetched(lambda y0, y1: np.asarray(data[y0:y1]), ranges, data.shape[1])


def _mmap_root(arr: np.ndarray) -> tuple[mmap.mmap, int] | None:
    """(mmap object, its start address) behind a memory-mapped array, or None."""
    prev, b = arr, arr.base
    while b is not None and not isinstance(b, mmap.mmap):
        prev, b = b, getattr(b, "base", None)
    if not isinstance(b, mmap.mmap) or not isinstance(prev, np.memmap):
        return None
    start = prev.ctypes.data - (int(prev.offset) % mmap.ALLOCATIONGRANULARITY)
    return b, start


#: mapped pages are released after each band only when the mapping is larger than this (bytes):
#: smaller files stay mapped, so a repeated run on the same memmap does not fault them in again,
#: and resident memory grows by at most this much
RELEASE_BYTES = 512 * 2**20


def _release_root(arr: np.ndarray) -> tuple[mmap.mmap, int] | None:
    """The mapping behind ``arr`` when it is big enough that its pages should be released."""
    root = _mmap_root(arr)
    if root is None or len(root[0]) <= RELEASE_BYTES:
        return None
    return root


def _releaser(root: tuple[mmap.mmap, int] | None, block: np.ndarray) -> Callable[[], None] | None:
    """Drop the mapped pages of ``block`` from this process (the page cache keeps them)."""
    if root is None or not hasattr(mmap, "MADV_DONTNEED") or block.size == 0:
        return None
    mm, start = root
    lo = block.ctypes.data - start
    hi = lo + (block.shape[0] - 1) * block.strides[0] + _row_bytes(block.shape, block.dtype)
    lo = (lo // _PAGE) * _PAGE
    hi = min((hi // _PAGE) * _PAGE, len(mm))

    def release() -> None:
        if hi > lo:
            try:
                mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
            except (OSError, ValueError):
                pass

    return release


def _numpy_bands(data: np.ndarray, rows_per_chunk: int | None) -> Iterator[tuple[int, int, list[Tile]]]:
    ny, nx = data.shape[:2]
    rows = _rows_for(data.shape, data.dtype, rows_per_chunk)
    root = _release_root(data)
    arr = data.view(np.ndarray) if isinstance(data, np.memmap) else data
    for y0 in range(0, ny, rows):
        y1 = min(ny, y0 + rows)
        block = arr[y0:y1]
        yield y0, y1, [(0, nx, block, _releaser(root, block) if block.flags.c_contiguous else None)]


def _prefetched(
    read: Callable[[int, int], np.ndarray], ranges: list[tuple[int, int]], nx: int
) -> Iterator[tuple[int, int, list[Tile]]]:
    """Read band k+1 in a background thread while band k is computed."""
    if not ranges:
        return
    with ThreadPoolExecutor(max_workers=1) as ex:
        fut = ex.submit(read, *ranges[0])
        for i, (y0, y1) in enumerate(ranges):
            block = fut.result()
            if i + 1 < len(ranges):
                fut = ex.submit(read, *ranges[i + 1])
            yield y0, y1, [(0, nx, block, None)]


def _dask_bands(data: Any, rows_per_chunk: int | None) -> Iterator[tuple[int, int, list[Tile]]]:
    ny = int(data.shape[0])
    if rows_per_chunk is None:
        # whole storage chunks along scan_y, grouped up to the band size
        edges, acc, y = [0], 0, 0
        rb = _row_bytes(tuple(data.shape), data.dtype)
        for c in data.chunks[0]:
            if acc and (acc + c) * rb > BAND_BYTES:
                edges.append(y)
                acc = 0
            acc += c
            y += c
        edges.append(ny)
        ranges = list(zip(edges[:-1], edges[1:]))
    else:
        rows = _rows_for(tuple(data.shape), data.dtype, rows_per_chunk)
        ranges = [(y, min(ny, y + rows)) for y in range(0, ny, rows)]
    yield from _prefetched(lambda y0, y1: np.asarray(data[y0:y1].compute()), ranges, data.shape[1])


def _h5_read_bands(ds: Any, rows_per_chunk: int | None) -> Iterator[tuple[int, int, list[Tile]]]:
    ny = int(ds.shape[0])
    align = ds.chunks[0] if ds.chunks else 1
    rows = _rows_for(tuple(ds.shape), ds.dtype, rows_per_chunk, align)
    ranges = [(y, min(ny, y + rows)) for y in range(0, ny, rows)]
    bufs = [np.empty((rows, *ds.shape[1:]), ds.dtype) for _ in range(min(2, len(ranges)))]

    def read(y0: int, y1: int) -> np.ndarray:
        buf = bufs[(y0 // rows) % len(bufs)][: y1 - y0]
        ds.read_direct(buf, np.s_[y0:y1])
        return buf

    yield from _prefetched(read, ranges, ds.shape[1])


def _h5_direct(ds: Any) -> np.ndarray | _H5Chunks | None:
    """A zero-copy view of an uncompressed HDF5 dataset in a plain file, or None."""
    try:
        if ds.file.driver not in ("sec2", "stdio") or not ds.dtype.isnative:
            return None
        if ds.id.get_create_plist().get_nfilters() != 0 or ds.external:
            return None
        fname = ds.file.filename
        if not os.path.isfile(fname):
            return None
        if ds.chunks is None:
            off = ds.id.get_offset()
            if off is None:
                return None
            return np.memmap(fname, dtype=ds.dtype, mode="r", offset=off, shape=ds.shape)
        if tuple(ds.chunks[2:]) != tuple(ds.shape[2:]):
            return None
        return _H5Chunks(ds, fname)
    except Exception:  # noqa: BLE001 - any h5py surprise: use ordinary reads
        return None


class _H5Chunks:
    """Chunks of an unfiltered chunked HDF5 dataset (whole patterns per chunk), memory-mapped."""

    def __init__(self, ds: Any, fname: str) -> None:
        self.ds = ds
        self.mm = np.memmap(fname, dtype=np.uint8, mode="r")
        self.root = _release_root(self.mm)
        self.chunks = tuple(int(c) for c in ds.chunks)
        self.shape = tuple(int(n) for n in ds.shape)

    def _chunk(self, iy: int, ix: int) -> np.ndarray | None:
        cy, cx = self.chunks[:2]
        info = self.ds.id.get_chunk_info_by_coord((iy * cy, ix * cx, 0, 0))
        if info.byte_offset is None:
            return None
        n = int(np.prod(self.chunks)) * self.ds.dtype.itemsize
        full = self.mm[info.byte_offset : info.byte_offset + n].view(self.ds.dtype)
        full = full.reshape(self.chunks)
        return full[: min(cy, self.shape[0] - iy * cy), : min(cx, self.shape[1] - ix * cx)]

    def bands(self, rows_per_chunk: int | None) -> Iterator[tuple[int, int, list[Tile]]]:
        ny, nx = self.shape[:2]
        cy, cx = self.chunks[:2]
        chunk_bytes = int(np.prod(self.chunks)) * self.ds.dtype.itemsize
        gather = cx < nx and chunk_bytes < 4 * 2**20
        for iy in range(-(-ny // cy)):
            y0, y1 = iy * cy, min(ny, (iy + 1) * cy)
            views = [self._chunk(iy, ix) for ix in range(-(-nx // cx))]
            if any(v is None for v in views):  # unallocated chunks: let h5py apply the fill value
                yield y0, y1, [(0, nx, np.asarray(self.ds[y0:y1]), None)]
                continue
            if gather:
                band = np.empty((y1 - y0, nx, *self.shape[2:]), self.ds.dtype)
                for ix, v in enumerate(views):
                    band[:, ix * cx : ix * cx + v.shape[1]] = v
                    rel = _releaser(self.root, v)
                    if rel is not None:
                        rel()
                yield y0, y1, [(0, nx, band, None)]
            else:
                yield y0, y1, [
                    (ix * cx, ix * cx + v.shape[1], v, _releaser(self.root, v))
                    for ix, v in enumerate(views)
                ]
