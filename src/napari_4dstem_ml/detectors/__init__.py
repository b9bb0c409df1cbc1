"""Virtual detectors: geometry (masks, presets), BF-disk centre and descan, the streaming engine,
and centre of mass / iCoM. Axis order ``(scan_y, scan_x, ky, kx)``; numba loads only on use."""

from .centre import DescanFit, bf_disk, bf_disk_radius, find_bf_centre, fit_descan
from .com import center_of_mass, find_scan_rotation, integrate_com, rotate_com
from .engine import (
    EngineError,
    VirtualImageProgress,
    iter_virtual_images,
    mean_pattern,
    preview_virtual_images,
    virtual_images,
)
from .geometry import Detector, DetectorError, annular_mask, masks_for, max_radius_px, presets

__all__ = [
    "DescanFit",
    "Detector",
    "DetectorError",
    "EngineError",
    "VirtualImageProgress",
    "annular_mask",
    "bf_disk",
    "bf_disk_radius",
    "center_of_mass",
    "find_bf_centre",
    "find_scan_rotation",
    "fit_descan",
    "integrate_com",
    "iter_virtual_images",
    "masks_for",
    "max_radius_px",
    "mean_pattern",
    "preview_virtual_images",
    "presets",
    "rotate_com",
    "virtual_images",
]
