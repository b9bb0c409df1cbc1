"""Numba kernels of the virtual-detector engine (imported lazily: numba is slow to import).

``cast_rows`` and ``runs_dot`` use ``fastmath=False``: their reductions are element-wise
accumulations into a small array (vectorised without re-association), reduced at the end.
``masked_dots`` is a long dot product per mask: it allows re-association and FMA contraction
(``fastmath={'reassoc', 'contract'}``) so that LLVM vectorises it with many partial sums. The
sum is then taken in a different order than a sequential loop (relative differences ~1e-7 per
term, well within float32 accumulation error); NaN and infinities still propagate, because the
``nnan``/``ninf`` flags are not set.

``span_sums`` and ``column_run_sums`` sum masks made of runs of constant weight (binary disks,
annuli): integer data in integers (exact), float data in float64 (``span_sums`` in order;
``column_run_sums`` re-associates its float64 prefix sums). ``column_run_sums`` prefetches the
next pattern (``_prefetch``, ``llvm.prefetch``) while summing one; ``span_sums`` reads four
patterns as four sequential streams, which the hardware prefetcher follows.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def _prefetch(typingctx, arr, idx):  # pragma: no cover - compiled
    """Software prefetch (read, keep in all cache levels) of ``arr[idx]`` (1D, no bounds check;
    a prefetch never faults)."""
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


@njit(parallel=True, fastmath=False, cache=True, nogil=True)
def cast_rows(src, r0, dst):  # pragma: no cover - compiled
    """``dst[p, i, j] = float32(src[p, r0 + i, j])``: detector rows ``r0 .. r0 + dst.shape[1]``.

    ``src`` is ``(P, ky, kx)`` (any numeric dtype, C-contiguous), ``dst`` ``(>= P, nr, kx)``
    float32 C-contiguous. Parallel over patterns.
    """
    p_n = src.shape[0]
    nr, kx = dst.shape[1], dst.shape[2]
    for p in prange(p_n):
        for i in range(nr):
            _cast_row(src[p, r0 + i], dst[p, i], kx)


@njit(inline="always", fastmath=False)
def _cast_row(s, d, n):  # pragma: no cover - compiled
    for j in range(n):
        d[j] = np.float32(s[j])


@njit(inline="always", fastmath=False)
def _fma_run(acc, c0, w, wo, x, n):  # pragma: no cover - compiled
    for i in range(n):
        acc[c0 + i] += w[wo + i] * np.float32(x[c0 + i])


@njit(parallel=True, fastmath=False, cache=True, nogil=True)
def runs_dot(block, group, run_row, run_col, run_len, run_woff, set_ptr, weights, n_masks, out):
    """Sparse masked dot with a mask set per scan position.

    ``block`` ``(R, NX, ky, kx)`` C-contiguous, any numeric dtype; ``group`` ``(R, NX)`` int64 —
    the mask set of each position; mask ``m`` of set ``g`` is the runs ``set_ptr[g*M+m] ..
    set_ptr[g*M+m+1]``, run ``k`` covering detector row ``run_row[k]``, columns
    ``run_col[k] .. + run_len[k]`` with weights ``weights[run_woff[k]:...]``.
    ``out`` ``(M, R, NX)`` float32. float32 accumulation per detector column, then summed.
    """
    r_n, nx, _, kx = block.shape
    n = r_n * nx
    n_chunks = min(n, 256)
    for t in prange(n_chunks):
        acc = np.zeros(kx, np.float32)
        q0 = t * n // n_chunks
        q1 = (t + 1) * n // n_chunks
        for q in range(q0, q1):
            r = q // nx
            c = q - r * nx
            g = group[r, c]
            for m in range(n_masks):
                for j in range(kx):
                    acc[j] = 0.0
                for k in range(set_ptr[g * n_masks + m], set_ptr[g * n_masks + m + 1]):
                    _fma_run(acc, run_col[k], weights, run_woff[k], block[r, c, run_row[k]],
                             run_len[k])
                s = np.float32(0.0)
                for j in range(kx):
                    s += acc[j]
                out[m, r, c] = s


@njit(inline="always", fastmath=False)
def _four_patterns(p2, p0):  # pragma: no cover - compiled
    """Rows ``p0 .. p0 + 3`` of ``p2``; past the end, the last row again (its results are not
    stored)."""
    last = p2.shape[0] - 1
    return p2[p0], p2[min(p0 + 1, last)], p2[min(p0 + 2, last)], p2[min(p0 + 3, last)]


@njit(parallel=True, fastmath={"reassoc", "contract"}, cache=True, nogil=True)
def masked_dots(p2, lo, length, woff, weights, out):  # pragma: no cover - compiled
    """Fused cast + dense dot per mask: ``out[m, p] = sum_i weights[woff[m] + i] *
    float32(p2[p, lo[m] + i])`` for ``i < length[m]``.

    ``p2`` ``(P, ky*kx)`` C-contiguous, any numeric dtype; mask ``m`` is the contiguous range of
    flattened detector pixels ``lo[m] .. lo[m] + length[m]`` (its bounding detector rows) with
    float32 ``weights``. ``out`` ``(M, P)`` float32. Patterns are taken four at a time: each
    weight is loaded once for four patterns (four vectorised sums in one loop); parallel over
    groups of four patterns. Array views keep the indices provably non-negative (no
    wrap-around code in the inner loop).
    """
    p_n = p2.shape[0]
    n_masks = lo.shape[0]
    n_q = (p_n + 3) // 4
    n_chunks = min(n_q, 256)
    for t in prange(n_chunks):
        for q in range(t * n_q // n_chunks, (t + 1) * n_q // n_chunks):
            p0 = 4 * q
            r0, r1, r2, r3 = _four_patterns(p2, p0)
            for m in range(n_masks):
                a = lo[m]
                b = a + length[m]
                w = weights[woff[m] : woff[m] + length[m]]
                x0 = r0[a:b]
                x1 = r1[a:b]
                x2 = r2[a:b]
                x3 = r3[a:b]
                s0 = np.float32(0.0)
                s1 = np.float32(0.0)
                s2 = np.float32(0.0)
                s3 = np.float32(0.0)
                for i in range(w.shape[0]):
                    wi = w[i]
                    s0 += wi * np.float32(x0[i])
                    s1 += wi * np.float32(x1[i])
                    s2 += wi * np.float32(x2[i])
                    s3 += wi * np.float32(x3[i])
                out[m, p0] = s0
                if p0 + 1 < p_n:
                    out[m, p0 + 1] = s1
                if p0 + 2 < p_n:
                    out[m, p0 + 2] = s2
                if p0 + 3 < p_n:
                    out[m, p0 + 3] = s3


@njit(parallel=True, fastmath={"reassoc", "contract"}, cache=True, nogil=True)
def masked_dots_clipped(p2, lo, length, woff, weights, out):  # pragma: no cover - compiled
    """:func:`masked_dots` of the patterns with negatives clipped to 0 (``np.clip(x, 0, None)``:
    NaN stays NaN), fused: ``out[m, p] = sum_i weights[...] * max(float32(p2[p, ...]), 0)``.
    The readout of a model whose preprocessing clips (background-subtracted float data such as
    EMPAD's), in the same single pass over the data."""
    p_n = p2.shape[0]
    n_masks = lo.shape[0]
    n_q = (p_n + 3) // 4
    n_chunks = min(n_q, 256)
    zero = np.float32(0.0)
    for t in prange(n_chunks):
        for q in range(t * n_q // n_chunks, (t + 1) * n_q // n_chunks):
            p0 = 4 * q
            r0, r1, r2, r3 = _four_patterns(p2, p0)
            for m in range(n_masks):
                a = lo[m]
                b = a + length[m]
                w = weights[woff[m] : woff[m] + length[m]]
                x0 = r0[a:b]
                x1 = r1[a:b]
                x2 = r2[a:b]
                x3 = r3[a:b]
                s0 = np.float32(0.0)
                s1 = np.float32(0.0)
                s2 = np.float32(0.0)
                s3 = np.float32(0.0)
                for i in range(w.shape[0]):
                    wi = w[i]
                    v0 = np.float32(x0[i])
                    v1 = np.float32(x1[i])
                    v2 = np.float32(x2[i])
                    v3 = np.float32(x3[i])
                    s0 += wi * (zero if v0 < zero else v0)
                    s1 += wi * (zero if v1 < zero else v1)
                    s2 += wi * (zero if v2 < zero else v2)
                    s3 += wi * (zero if v3 < zero else v3)
                out[m, p0] = s0
                if p0 + 1 < p_n:
                    out[m, p0 + 1] = s1
                if p0 + 2 < p_n:
                    out[m, p0 + 2] = s2
                if p0 + 3 < p_n:
                    out[m, p0 + 3] = s3


@njit(parallel=True, fastmath=False, cache=True, nogil=True)
def span_sums(p2, lo, length, w, midx, tot_proto, out):  # pragma: no cover - compiled
    """Masks as row spans of constant weight: ``out[m, p] = sum_k w[k] * sum(p2[p, lo[k]:lo[k] +
    length[k]])`` over the spans ``k`` with ``midx[k] == m``.

    Patterns are taken four at a time: each span is summed for the four patterns in one loop
    (four independent accumulators, so the loop set-up and the unpredictable loop exit of a
    short span are paid once per four patterns, and the four add chains overlap); spans are in
    increasing ``lo``, so each pattern is read front to back (the hardware prefetcher follows
    four streams). Array views per span keep the indices provably non-negative, so that numba
    emits no wrap-around code in the inner loop. ``p2`` ``(P, ky*kx)`` C-contiguous, any native
    numeric dtype; ``tot_proto`` (one element) sets the accumulator: ``int64`` (integer data up
    to 32 bits with integer ``w``: exact integer sums, rounded once to float32) or ``float64``
    (float data: each span summed in order in float64). ``out`` ``(M, P)`` float32. Parallel
    over groups of four patterns.
    """
    p_n = p2.shape[0]
    n_masks = out.shape[0]
    n_q = (p_n + 3) // 4
    n_chunks = min(n_q, 256)
    zero = tot_proto[0] * 0
    for t in prange(n_chunks):
        tot = np.zeros((4, n_masks), tot_proto.dtype)
        for q in range(t * n_q // n_chunks, (t + 1) * n_q // n_chunks):
            p0 = 4 * q
            r0, r1, r2, r3 = _four_patterns(p2, p0)
            tot[:] = 0
            for k in range(lo.shape[0]):
                a = lo[k]
                b = a + length[k]
                x0 = r0[a:b]
                x1 = r1[a:b]
                x2 = r2[a:b]
                x3 = r3[a:b]
                s0 = zero
                s1 = zero
                s2 = zero
                s3 = zero
                for i in range(x0.shape[0]):
                    s0 += x0[i]
                    s1 += x1[i]
                    s2 += x2[i]
                    s3 += x3[i]
                m = midx[k]
                wk = w[k]
                tot[0, m] += wk * s0
                tot[1, m] += wk * s1
                tot[2, m] += wk * s2
                tot[3, m] += wk * s3
            for j in range(min(4, p_n - p0)):
                for m in range(n_masks):
                    out[m, p0 + j] = tot[j, m]


@njit(parallel=True, fastmath={"reassoc"}, cache=True, nogil=True)
def column_run_sums(p2, lo, hi, w, mptr, r0, nr, kx, proto, out):  # pragma: no cover
    """Masks as column runs of constant weight, summed from per-column prefix sums.

    For each pattern, ``C[i, j] = sum_{r < i} p2[p, (r0 + r) * kx + j]`` (``i <= nr``) is built
    row by row (vectorised over the ``kx`` columns) in the dtype of ``proto`` (int32 / int64 /
    float64), then ``out[m, p] = sum_k w[k] * (C.flat[hi[k]] - C.flat[lo[k]])`` over the runs
    ``k`` of mask ``m`` (``mptr[m] .. mptr[m + 1]``), summed in float64; a run of column ``j``
    over rows ``a .. b`` has ``lo = a*kx + j``, ``hi = b*kx + j``. Integer prefixes and integer
    weights give exact sums (below 2**53); float data: a non-finite value poisons the rest of its column (callers
    recompute bands with non-finite results). The next pattern's rows are prefetched while one
    is summed. ``out`` ``(M, P)`` float32.
    """
    p_n = p2.shape[0]
    n_masks = mptr.shape[0] - 1
    n_chunks = min(p_n, 256)
    base = r0 * kx
    flat = p2.reshape(p2.size)
    n = p2.shape[1]
    line = max(1, 64 // p2.itemsize)
    for t in prange(n_chunks):
        cf = np.zeros((nr + 1) * kx, proto.dtype)
        for p in range(t * p_n // n_chunks, (t + 1) * p_n // n_chunks):
            xf = p2[p]
            nxt = min(p + 1, p_n - 1) * n + base
            for i in range(nr):
                a = i * kx
                for q in range(a - a % line, a + kx, line):  # the next pattern's row
                    _prefetch(flat, nxt + q)
                _prefix_row(cf[a : a + kx], cf[a + kx : a + 2 * kx], xf[base + a : base + a + kx])
            for m in range(n_masks):
                out[m, p] = _run_diffs(cf, lo, hi, w, mptr[m], mptr[m + 1])


@njit(fastmath=False, nogil=True)
def _run_diffs(cf, lo, hi, w, k0, k1):  # pragma: no cover - compiled
    """``sum_k w[k] * (cf[hi[k]] - cf[lo[k]])`` for ``k0 <= k < k1`` in float64, four partial sums.

    Not re-associated, so that LLVM keeps scalar loads (AVX-512 gathers are slower here); exact
    for integer prefixes while partial sums stay below 2**53."""
    s0 = s1 = s2 = s3 = 0.0
    k = k0
    while k + 4 <= k1:
        s0 += np.float64(w[k]) * np.float64(cf[hi[k]] - cf[lo[k]])
        s1 += np.float64(w[k + 1]) * np.float64(cf[hi[k + 1]] - cf[lo[k + 1]])
        s2 += np.float64(w[k + 2]) * np.float64(cf[hi[k + 2]] - cf[lo[k + 2]])
        s3 += np.float64(w[k + 3]) * np.float64(cf[hi[k + 3]] - cf[lo[k + 3]])
        k += 4
    while k < k1:
        s0 += np.float64(w[k]) * np.float64(cf[hi[k]] - cf[lo[k]])
        k += 1
    return (s0 + s1) + (s2 + s3)


@njit(inline="always", fastmath=False)
def _prefix_row(cp, cn, x):  # pragma: no cover - compiled
    for j in range(x.shape[0]):
        cn[j] = cp[j] + x[j]
