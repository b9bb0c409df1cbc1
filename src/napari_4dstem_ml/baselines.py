"""The classical images every ML reconstruction is shown beside: iCoM and the ADF annulus.

A learned reconstruction is only worth using where it beats what needs no training, so the
demo, the GUI's Compare and the transfer benchmark compute both classical baselines from the
same 4D data:

- **iCoM** (integrated centre of mass): the CoM of every pattern (inside the detector's
  inscribed circle, about the bright-field disk's centre) minus a fitted descan plane, turned
  by the scan rotation, integrated in Fourier space (mirrored, no wrap-around). For a thin
  (weak-phase) sample it approximates the projected potential.
- **ADF**: a virtual annular dark-field detector from 1.5 α (α the convergence semi-angle)
  to 4 α, clipped to the largest circle the detector holds; when the detector does not reach
  1.5 α, the outermost ring it has outside the bright-field disk. When it holds no such ring
  (it ends inside or at the bright-field disk, e.g. a small simulated detector), there is no
  ADF baseline: ``Baselines.adf`` is ``None`` and ``Baselines.notes`` says why. On thick
  samples ADF is the robust classical image.

Axis order ``(scan_y, scan_x, ky, kx)``; images ``(Ny, Nx)`` float32.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .dataset import Dataset4D

__all__ = ["Baselines", "NoDarkFieldError", "adf_annulus", "classical_baselines", "icom_image"]


class NoDarkFieldError(ValueError):
    """The detector holds no ring outside the bright-field disk: no ADF image can be made."""


@dataclass
class Baselines:
    """iCoM and ADF images of one data set, and how they were made (``info``). ``adf`` is
    ``None`` when the detector holds no dark-field ring (``notes`` says so)."""

    icom: np.ndarray
    adf: np.ndarray | None
    info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def images(self) -> dict[str, np.ndarray]:
        """The baseline images that exist, by name ("iCoM", "ADF")."""
        return {n: im for n, im in (("iCoM", self.icom), ("ADF", self.adf)) if im is not None}


def adf_annulus(
    detector_shape: tuple[int, int], centre: tuple[float, float], r_bf_px: float
) -> tuple[float, float, str]:
    """(inner, outer) radii in px of the ADF baseline and a note when the detector limits it.

    From 1.5 α to 4 α (α = ``r_bf_px``), the outer radius clipped to the detector's reach;
    when that leaves less than a pixel, the outermost ring of the detector outside 1.05 α.
    :class:`NoDarkFieldError` when the detector ends inside (or within half a pixel of) the
    bright-field disk."""
    from .detectors import max_radius_px

    r_max = max_radius_px(detector_shape, centre)
    if not (np.isfinite(r_bf_px) and r_bf_px > 0 and np.isfinite(r_max)):
        raise NoDarkFieldError(f"no ADF baseline: bright-field disk radius {r_bf_px!r} px, "
                               f"detector reach {r_max!r} px")
    inner, outer = 1.5 * r_bf_px, min(4.0 * r_bf_px, r_max)
    note = ""
    if outer < 4.0 * r_bf_px:
        note = f"outer radius clipped to the detector's reach ({r_max / r_bf_px:.2f} α)"
    if inner >= outer - 1.0:
        inner, outer = max(1.05 * r_bf_px, r_max - max(2.0, 0.15 * r_bf_px)), r_max
        if outer - inner < 0.5:
            raise NoDarkFieldError(
                f"no ADF baseline: the detector reaches only {r_max / r_bf_px:.2f} α "
                f"({r_max:.1f} px from the centre, the bright-field disk {r_bf_px:.1f} px): "
                "it holds no dark-field ring")
        note = (f"the detector reaches only {r_max / r_bf_px:.2f} α: ADF from its outermost "
                f"ring ({inner / r_bf_px:.2f}–{outer / r_bf_px:.2f} α)")
    return float(inner), float(outer), note


def icom_image(
    data: Any,
    centre: tuple[float, float],
    scan_step_A: tuple[float, float] | None = None,
    *,
    scan_rotation_deg: float | None = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """iCoM of ``data`` ``(scan_y, scan_x, ky, kx)`` as every part of the plugin computes it:
    the CoM (px) inside the detector's inscribed circle about ``centre`` (cy, cx) px, minus a
    fitted descan plane, turned by ``scan_rotation_deg`` (``None``: fitted by minimising the
    curl), integrated by mirrored Fourier integration with the scan step (Å; ``None``: 1).
    Returns (iCoM, CoM y, CoM x, info), the CoM components after descan removal and rotation.
    """
    from .detectors import max_radius_px
    from .detectors.centre import fit_descan
    from .detectors.com import center_of_mass, find_scan_rotation, integrate_com, rotate_com

    ny, nx = data.shape[:2]
    ky, kx = data.shape[2:]
    r_max = max_radius_px((ky, kx), centre)
    yy, xx = np.mgrid[:ky, :kx]
    inside = (np.hypot(yy - centre[0], xx - centre[1]) <= r_max).astype(np.float32)
    com_y, com_x = center_of_mass(data, mask=inside, centre=centre)
    ok = np.isfinite(com_y) & np.isfinite(com_x)
    if ok.sum() >= 3:
        d = fit_descan(com_y, com_x)
        py, px = d.centres((ny, nx))
        com_y, com_x = com_y - py, com_x - px
    if scan_rotation_deg is None:
        rot, flip = find_scan_rotation(com_y, com_x)
        if flip:
            com_y, com_x = com_x, com_y
    else:
        rot, flip = float(scan_rotation_deg), False
    gy, gx = rotate_com(com_y, com_x, rot) if rot else (com_y, com_x)
    icom = integrate_com(gy, gx, tuple(scan_step_A or (1.0, 1.0)), mirror=True)
    info = {"icom_scan_rotation_deg": float(rot), "icom_transposed": bool(flip)}
    return (np.asarray(icom, np.float32), np.asarray(gy, np.float32), np.asarray(gx, np.float32),
            info)


def classical_baselines(
    dataset: Dataset4D,
    *,
    centre: tuple[float, float] | None = None,
    scan_rotation_deg: float | None = 0.0,
    step: int | None = None,
) -> Baselines:
    """iCoM and ADF of ``dataset`` (see the module docstring).

    ``centre`` (cy, cx) px of the bright-field disk (default: found in the mean pattern);
    ``scan_rotation_deg``: the angle from detector to scan axes (``None``: fitted by
    minimising the curl of the CoM field); ``step``: stride of the mean-pattern subsample.
    """
    from .detectors import annular_mask, bf_disk, mean_pattern, virtual_images

    ny, nx = dataset.scan_shape
    if step is None:
        step = max(1, min(ny, nx) // 32)
    mean = mean_pattern(dataset.data, step=step)
    c, r_bf = bf_disk(mean, dataset.calibration)
    if centre is not None:
        c = (float(centre[0]), float(centre[1]))
    notes: list[str] = []
    adf = None
    info: dict[str, Any] = {"centre_px": [float(c[0]), float(c[1])], "bf_radius_px": float(r_bf)}
    try:
        inner, outer, note = adf_annulus(dataset.detector_shape, c, r_bf)
        mask = annular_mask(dataset.detector_shape, c, inner, outer)
        if not np.any(mask):
            raise NoDarkFieldError(
                f"no ADF baseline: the ring {inner:.2f}-{outer:.2f} px holds no detector pixel")
    except NoDarkFieldError as exc:
        notes.append(str(exc))
        info.update(adf_note=str(exc), adf_skipped=True)
    else:
        adf = np.asarray(virtual_images(dataset.data, mask[None])[0], np.float32)
        info.update(adf_px=[inner, outer], adf_alpha=[inner / r_bf, outer / r_bf], adf_note=note)
        px = dataset.calibration.detector_pixel_mrad
        if px is not None:
            info["adf_mrad"] = [inner * px[0], outer * px[0]]
    icom, _, _, icom_info = icom_image(dataset.data, c, dataset.calibration.scan_step_A,
                                       scan_rotation_deg=scan_rotation_deg)
    info.update(icom_info)
    return Baselines(icom=np.asarray(icom, np.float32), adf=adf, info=info, notes=notes)
