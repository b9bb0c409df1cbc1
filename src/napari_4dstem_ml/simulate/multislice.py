"""One abTEM scan with a pixelated and an annular detector (shared by the sample generators)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..dataset import electron_wavelength_A


def scan_patterns(probe: Any, potential: Any, scan: Any, cfg: Any, max_angle_mrad: float | None = None,
                  shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Run ``probe`` over ``scan`` through ``potential`` (abTEM 1.x objects).

    ``cfg`` supplies ``energy_ev``, ``detector.max_angle_mrad``, ``detector.pixel_mrad``,
    ``adf_inner_mrad`` and ``adf_outer_mrad``. Returns the diffraction patterns
    ``(scan_y, scan_x, ky, kx)`` float32 on abTEM's grid, the ADF image ``(scan_y, scan_x)``
    and that grid's pixel (ky, kx) in mrad (abTEM orders axes x first: transposed here).
    ``max_angle_mrad`` crops the patterns (default: the detector's reach along an axis + 3 px).
    ``shape``: (rows, cols) of a ``CustomScan`` whose positions are listed row-major (y, x);
    None for a ``GridScan``.
    """
    import abtem

    lam = electron_wavelength_A(cfg.energy_ev)
    if max_angle_mrad is None:
        max_angle_mrad = cfg.detector.max_angle_mrad + 3 * cfg.detector.pixel_mrad
    det = abtem.PixelatedDetector(max_angle=max_angle_mrad)
    adf = abtem.AnnularDetector(inner=cfg.adf_inner_mrad, outer=cfg.adf_outer_mrad)
    dp, im = probe.scan(potential, scan=scan, detectors=[det, adf]).compute(
        scheduler="synchronous", progress_bar=False)
    if shape is not None:  # custom positions: (n, kx, ky) and (n,), row-major (y, x)
        pats = np.asarray(dp.array, np.float32)
        patterns = np.ascontiguousarray(pats.reshape(*shape, *pats.shape[-2:]).transpose(0, 1, 3, 2))
        image = np.ascontiguousarray(np.asarray(im.array, np.float32).reshape(shape))
        return patterns, image, (dp.sampling[1] * lam * 1e3, dp.sampling[0] * lam * 1e3)
    patterns = np.ascontiguousarray(np.asarray(dp.array, np.float32).transpose(1, 0, 3, 2))
    image = np.ascontiguousarray(np.asarray(im.array, np.float32).T)
    return patterns, image, (dp.sampling[1] * lam * 1e3, dp.sampling[0] * lam * 1e3)
