"""Display transforms for diffraction data (headless; used by the napari widgets and the CLI).

Diffraction patterns span about 10⁶:1 (EMPAD), so they are shown on a log or power scale with
contrast limits taken from percentiles of a few sampled patterns (never from the whole array).
Axis order ``(scan_y, scan_x, ky, kx)``; all functions return float32.
"""

from __future__ import annotations

import numpy as np

DISPLAY_MODES = ("linear", "log", "power")


def log_scale(a, floor: float = 0.0) -> np.ndarray:
    """``log10(1 + max(a - floor, 0))`` as float32 (negatives from background subtraction clip to 0)."""
    a = np.asarray(a, dtype=np.float32)
    return np.log10(1.0 + np.maximum(a - np.float32(floor), 0.0, dtype=np.float32))


def power_scale(a, exponent: float = 0.25) -> np.ndarray:
    """``max(a, 0) ** exponent`` as float32 (exponent in (0, 1] compresses bright spots)."""
    if not 0 < exponent <= 1:
        raise ValueError(f"exponent must be in (0, 1], got {exponent}")
    a = np.asarray(a, dtype=np.float32)
    return np.power(np.maximum(a, 0.0, dtype=np.float32), np.float32(exponent))


def transform(a, mode: str = "linear", exponent: float = 0.25) -> np.ndarray:
    """Apply display ``mode`` ('linear', 'log' or 'power') to a pattern or image."""
    if mode == "linear":
        return np.asarray(a, dtype=np.float32)
    if mode == "log":
        return log_scale(a)
    if mode == "power":
        return power_scale(a, exponent)
    raise ValueError(f"display mode must be one of {DISPLAY_MODES}, got {mode!r}")


def sample_positions(scan_shape: tuple[int, int], n: int = 8) -> list[tuple[int, int]]:
    """Up to ``n`` scan positions ``(iy, ix)`` spread over the scan (deterministic)."""
    ny, nx = (int(s) for s in scan_shape)
    k = max(1, int(np.ceil(np.sqrt(n))))
    ys = np.unique(np.linspace(0, ny - 1, k).round().astype(int))
    xs = np.unique(np.linspace(0, nx - 1, k).round().astype(int))
    pos = [(int(y), int(x)) for y in ys for x in xs]
    return pos[: max(1, n)]


def robust_limits(values, low: float = 0.5, high: float = 99.95) -> tuple[float, float]:
    """Percentile contrast limits of ``values`` ignoring NaN; a non-empty range always."""
    v = np.asarray(values, dtype=np.float32).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (0.0, 1.0)
    lo, hi = (float(x) for x in np.percentile(v, [low, high]))
    if not hi > lo:
        lo, hi = float(v.min()), float(v.max())
    if not hi > lo:
        hi = lo + 1.0
    return (lo, hi)


def pattern_limits(
    data, mode: str = "linear", n_patterns: int = 8, exponent: float = 0.25
) -> tuple[float, float]:
    """Contrast limits for 4D ``data`` from ``n_patterns`` sampled patterns after ``mode``."""
    pos = sample_positions(data.shape[:2], n_patterns)
    stack = np.stack([transform(np.asarray(data[y, x]), mode, exponent) for y, x in pos])
    return robust_limits(stack)
