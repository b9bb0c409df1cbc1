"""Scan-shape handling shared by the readers: validating ``scan_shape``, viewing a stack of
frames ``(N, ky, kx)`` as ``(scan_y, scan_x, ky, kx)`` without copying, and choosing Dask
chunks of whole scan rows."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ReaderError, ScanShapeRequired

#: target size of one Dask chunk (bytes): whole scan rows, about 64 MB
CHUNK_BYTES = 64 * 2**20


def normalize_scan_shape(scan_shape: Any, path: str | Path | None = None) -> tuple[int, int] | None:
    """``(ny, nx)`` as two positive ints, or ``None``; a ``ReaderError`` for anything else."""
    if scan_shape is None:
        return None
    try:
        vals = [int(v) for v in np.asarray(scan_shape).ravel()]
    except (TypeError, ValueError):
        vals = []
    if len(vals) != 2 or min(vals) < 1:
        where = f"{path}: " if path is not None else ""
        raise ReaderError(
            f"{where}scan_shape must be two positive integers (ny, nx), got {scan_shape!r}", path,
            option="scan_shape",
        )
    return vals[0], vals[1]


def factorisations(n_frames: int, limit: int = 8) -> list[tuple[int, int]]:
    """Scan shapes ``(ny, nx)`` with ``ny * nx == n_frames``, the most square first (at most
    ``limit``; ``1 x N`` and ``N x 1`` are always among them)."""
    n = int(n_frames)
    if n < 1:
        return []
    pairs = [(a, n // a) for a in range(1, math.isqrt(n) + 1) if n % a == 0]
    pairs = sorted(pairs, key=lambda p: p[1] - p[0])  # most square first
    out: list[tuple[int, int]] = []
    for a, b in pairs:
        out.extend([(a, b)] if a == b else [(a, b), (b, a)])
    edge = [(1, n), (n, 1)] if n > 1 else [(1, 1)]
    head = [p for p in out if p not in edge][: max(0, limit - len(edge))]
    return head + edge


def describe_factorisations(n_frames: int) -> str:
    """``"shapes that fit: 3 x 3, 1 x 9, 9 x 1"`` for a message."""
    shapes = factorisations(n_frames)
    return "scan shapes that fit: " + ", ".join(f"{a} x {b}" for a, b in shapes)


def require_scan_shape(n_frames: int, scan_shape: tuple[int, int] | None, path: Path,
                       what: str = "frames") -> tuple[int, int]:
    """Check ``scan_shape`` against ``n_frames``; ``ScanShapeRequired`` when it is missing."""
    if scan_shape is None:
        raise ScanShapeRequired(
            f"{path}: holds a stack of {n_frames} {what} and does not say the scan shape "
            f"({describe_factorisations(n_frames)}); pass scan_shape=(ny, nx)",
            path,
            n_frames,
        )
    ny, nx = scan_shape
    if ny * nx != n_frames:
        raise ReaderError(
            f"{path}: scan_shape {ny} x {nx} = {ny * nx} positions does not match the "
            f"{n_frames} {what} in the file ({describe_factorisations(n_frames)})",
            path,
            option="scan_shape",
        )
    return scan_shape


def reshape_view(arr: np.ndarray, shape: tuple[int, ...], path: Path) -> np.ndarray:
    """``arr`` reshaped without copying (a ``ReaderError`` where only a copy would do)."""
    try:
        out = np.reshape(arr, shape, copy=False)
    except TypeError:  # NumPy < 2.1: no ``copy`` keyword
        out = arr.view()
        try:
            out.shape = shape
        except AttributeError as exc:
            raise ReaderError(f"{path}: cannot view the array as {shape} without copying", path) from exc
    except ValueError as exc:
        raise ReaderError(f"{path}: cannot view the array as {shape} without copying", path) from exc
    return out


def stack_to_4d(arr: np.ndarray, scan_shape: tuple[int, int] | None, path: Path) -> np.ndarray:
    """A 3D stack ``(N, ky, kx)`` (or a 4D array) as 4D, a view; frame ``i = iy * nx + ix``."""
    if arr.ndim == 4:
        if scan_shape is None or tuple(arr.shape[:2]) == tuple(scan_shape):
            return arr
        n = arr.shape[0] * arr.shape[1]
        require_scan_shape(n, scan_shape, path, "diffraction patterns")
        return reshape_view(arr, (*scan_shape, *arr.shape[2:]), path)
    if arr.ndim == 3:
        ny, nx = require_scan_shape(arr.shape[0], scan_shape, path, "diffraction patterns")
        return reshape_view(arr, (ny, nx, *arr.shape[1:]), path)
    raise ReaderError(
        f"{path}: expected a 4D array (scan_y, scan_x, ky, kx) or a 3D stack (N, ky, kx), "
        f"got shape {tuple(arr.shape)}",
        path,
    )


def rows_per_chunk(nx: int, ky: int, kx: int, itemsize: int, multiple_of: int = 1,
                   ny: int | None = None) -> int:
    """Scan rows per Dask chunk so that a chunk is about :data:`CHUNK_BYTES`."""
    row_bytes = max(1, nx * ky * kx * itemsize)
    rows = max(1, CHUNK_BYTES // row_bytes)
    m = max(1, int(multiple_of))
    rows = max(m, (rows // m) * m)
    if ny is not None:
        rows = min(rows, ny)
    return int(rows)
