"""Numba kernel of :meth:`Preprocessor.transform` (imported lazily: numba is slow to import).

The detector resampling is separable; along each axis every input pixel adds to at most two
output pixels (crop and block binning: one, with weight 1; area binning and bilinear
interpolation at a scale >= 1: two, weighted), so it is done as a scatter. One pass per pattern, parallel over patterns and
without the GIL: read the detector pixels in place (any real dtype and strides, e.g. an EMPAD
memmap's 130-row frames), clip negatives to 0, weight and sum along kx then along ky, then the
affine scale / angle mask / shift, the compression and the standardisation, in float32 and in
the order of the NumPy path, so that crop and block binning without compression give the
NumPy path's values bit for bit. Compression: ``power`` 0.5 and 0.25 as one and two square roots
(within 1 ulp of ``x ** p``), other powers as ``x ** p``; ``log`` as ``log1p``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

#: compression codes (argument ``comp`` of :func:`scatter_transform`)
NONE, POWER, SQRT, SQRT2, LOG = 0, 1, 2, 3, 4


def compression_code(kind: str, power: float) -> int:
    if kind == "power":
        return SQRT if power == 0.5 else SQRT2 if power == 0.25 else POWER
    return LOG if kind == "log" else NONE


def blocks(op, sl: slice, n_out: int) -> tuple[int, int] | None:
    """``(b, start)`` when an axis operator sums blocks of ``b`` pixels with weight 1, output
    ``j`` reading input pixels ``start + j*b .. start + (j+1)*b`` (clipped to the detector: the
    support slice may cut the first and last blocks), else ``None``."""
    if isinstance(op, int):
        return op, int(sl.start)
    m = np.asarray(op)
    n_read = m.shape[1]
    if n_read == 0 or not np.all((m == 0) | (m == 1)):
        return None
    lens = m.sum(1).astype(np.int64)
    b = int(lens.max())
    full_rows = np.flatnonzero(lens == b)
    if b < 1 or len(full_rows) == 0:
        return None
    j0 = int(full_rows[0])
    start = int(np.flatnonzero(m[j0])[0]) - j0 * b
    full = np.zeros((n_out, n_read), m.dtype)
    for j in range(n_out):
        lo, hi = max(0, start + j * b), min(n_read, start + (j + 1) * b)
        if hi > lo:
            full[j, lo:hi] = 1
    return (b, int(sl.start) + start) if np.array_equal(full, m) else None


@njit(inline="always", fastmath=False, cache=True, nogil=True)
def _finish(acc, i, fmul, mask, use_mask, fadd, comp, fpow, fmean, fstd, do_std, dst):
    """``dst[:] = standardise(compress(acc * fmul * mask[i] + fadd))``: one branch-free loop
    per step, so that each vectorises."""  # pragma: no cover - compiled
    ox = acc.shape[0]
    one = np.float32(1.0)
    zero = np.float32(0.0)
    if fmul != one:
        for j in range(ox):
            acc[j] = acc[j] * fmul
    if use_mask:
        for j in range(ox):
            acc[j] = acc[j] * mask[i, j]
    if fadd != zero:
        for j in range(ox):
            acc[j] = acc[j] + fadd
    if comp == 1:
        for j in range(ox):
            acc[j] = acc[j] ** fpow
    elif comp == 2:
        for j in range(ox):
            acc[j] = np.sqrt(acc[j])
    elif comp == 3:
        for j in range(ox):
            acc[j] = np.sqrt(np.sqrt(acc[j]))
    elif comp == 4:
        for j in range(ox):
            acc[j] = np.log1p(acc[j])
    if do_std:
        for j in range(ox):
            acc[j] = (acc[j] - fmean) / fstd
    for j in range(ox):
        dst[j] = acc[j]


@njit(parallel=True, fastmath=False, cache=True, nogil=True)
def block_transform(src, ys, by, xs, bx, a_mul, mask, use_mask, a_add, comp, power, mean, std,
                    do_std, out):  # pragma: no cover - compiled
    """``src`` (P, ky, kx) any real dtype → ``out`` (P, oy, ox) float32: output ``(i, j)`` sums
    the clipped pixels ``[ys + i*by, ys + (i+1)*by) × [xs + j*bx, xs + (j+1)*bx)`` that lie on the
    detector (kx first, then ky, in order), then scale, mask, shift, compression, standardisation."""
    n, oy, ox = out.shape
    ky, kx = src.shape[1], src.shape[2]
    fmul = np.float32(a_mul)
    fadd = np.float32(a_add)
    fpow = np.float32(power)
    fmean = np.float32(mean)
    fstd = np.float32(std)
    zero = np.float32(0.0)
    nbuf = ox * bx
    c0 = max(0, -xs)
    c1 = min(nbuf, kx - xs)
    for p in prange(n):
        buf = np.zeros(nbuf, np.float32)
        row = np.empty(ox, np.float32)
        acc = np.empty(ox, np.float32)
        for i in range(oy):
            first = True
            for di in range(by):
                y = ys + i * by + di
                if y < 0 or y >= ky:
                    continue
                for c in range(c0, c1):
                    v = np.float32(src[p, y, xs + c])
                    buf[c] = zero if v < zero else v  # NaN stays NaN, as np.clip
                for j in range(ox):
                    q = buf[j * bx]
                    for u in range(1, bx):
                        q = q + buf[j * bx + u]
                    row[j] = q
                if first:
                    for j in range(ox):
                        acc[j] = row[j]
                    first = False
                else:
                    for j in range(ox):
                        acc[j] = acc[j] + row[j]
            if first:
                for j in range(ox):
                    acc[j] = zero
            _finish(acc, i, fmul, mask, use_mask, fadd, comp, fpow, fmean, fstd, do_std, out[p, i])


def scatter(op, sl: slice, n_out: int) -> tuple[int, np.ndarray, np.ndarray] | None:
    """One axis operator of ``Preprocessor._operators`` (an int ``b``: block sums of ``b``
    pixels from ``sl.start``; or a matrix ``(n_out, n_read)`` over ``sl``) as, per input pixel
    read, the (at most two) output pixels it adds to: ``(start, j (n_read, 2), w (n_read, 2))``,
    ``j = -1`` for none. ``None`` when a pixel feeds more than two outputs (upsampling)."""
    if isinstance(op, int):
        n_read = op * n_out
        j = np.full((n_read, 2), -1, np.int64)
        j[:, 0] = np.arange(n_read) // op
        w = np.zeros((n_read, 2), np.float32)
        w[:, 0] = 1.0
        return int(sl.start), j, w
    m = np.asarray(op, np.float32)
    if int((m != 0).sum(0).max(initial=0)) > 2:
        return None
    n_read = m.shape[1]
    j = np.full((n_read, 2), -1, np.int64)
    w = np.zeros((n_read, 2), np.float32)
    for x in range(n_read):
        outs = np.flatnonzero(m[:, x])
        j[x, : len(outs)] = outs
        w[x, : len(outs)] = m[outs, x]
    return int(sl.start), j, w


@njit(parallel=True, fastmath=False, cache=True, nogil=True)
def scatter_transform(src, y0, jy, wy, x0, jx, wx, a_mul, mask, use_mask, a_add, comp, power,
                      mean, std, do_std, out):  # pragma: no cover - compiled
    """``src`` (P, ky, kx) any real dtype → ``out`` (P, oy, ox) float32; see the module doc.

    Input row ``y0 + r`` adds to output rows ``jy[r]`` with weights ``wy[r]``; input column
    ``x0 + c`` to output columns ``jx[c]`` with weights ``wx[c]``.
    """
    n, oy, ox = out.shape
    fmul = np.float32(a_mul)
    fadd = np.float32(a_add)
    fpow = np.float32(power)
    fmean = np.float32(mean)
    fstd = np.float32(std)
    zero = np.float32(0.0)
    one = np.float32(1.0)
    nr, nc = jy.shape[0], jx.shape[0]
    for p in prange(n):
        row = np.empty(ox, np.float32)
        acc = np.zeros((oy, ox), np.float32)
        for r in range(nr):
            for j in range(ox):
                row[j] = zero
            for c in range(nc):
                v = np.float32(src[p, y0 + r, x0 + c])
                if v < zero:
                    v = zero
                for k in range(2):
                    j = jx[c, k]
                    if j >= 0:
                        wv = wx[c, k]
                        row[j] = row[j] + (v if wv == one else v * wv)
            for k in range(2):
                i = jy[r, k]
                if i >= 0:
                    wt = wy[r, k]
                    if wt == one:
                        for j in range(ox):
                            acc[i, j] = acc[i, j] + row[j]
                    else:
                        for j in range(ox):
                            acc[i, j] = acc[i, j] + row[j] * wt
        for i in range(oy):
            _finish(acc[i], i, fmul, mask, use_mask, fadd, comp, fpow, fmean, fstd, do_std, out[p, i])
