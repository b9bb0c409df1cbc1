"""Centre of mass (CoM / DPC), its rotation, and Fourier integration (iCoM).

CoM maps are ``(Ny, Nx)``, in detector pixels relative to the given centre (or in mrad with a
calibration); ``com_y`` is along ky, ``com_x`` along kx. They are computed by the streaming
engine as three masks in one pass: ``sum(I)``, ``sum((ky - cy) I)``, ``sum((kx - cx) I)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..dataset import Calibration
from .engine import EngineError, virtual_images


def com_masks(
    shape: tuple[int, int], centre: tuple[float, float] | None = None, mask: Any = None
) -> np.ndarray:
    """The three CoM masks ``(3, ky, kx)`` float32: ``mask``, ``mask·(ky-cy)``, ``mask·(kx-cx)``."""
    ky, kx = shape
    if centre is None:
        centre = ((ky - 1) / 2.0, (kx - 1) / 2.0)
    m = np.ones(shape, np.float64) if mask is None else np.asarray(mask, np.float64)
    if m.shape != tuple(shape):
        raise EngineError(f"CoM mask must have the detector shape {tuple(shape)}, got {m.shape}")
    y = np.arange(ky, dtype=np.float64)[:, None] - float(centre[0])
    x = np.arange(kx, dtype=np.float64)[None, :] - float(centre[1])
    return np.stack([m, m * y, m * x]).astype(np.float32)


def center_of_mass(
    data: Any,
    mask: Any = None,
    centre: tuple[float, float] | None = None,
    *,
    calibration: Calibration | None = None,
    **engine_kwargs: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """CoM ``(com_y, com_x)`` of every pattern of ``data`` ``(Ny, Nx, ky, kx)``.

    ``mask`` restricts the pixels used (weights, ``(ky, kx)``); ``centre`` (px, default the
    detector's geometric centre) is the origin. With ``calibration`` the result is in mrad.
    ``engine_kwargs`` go to :func:`.engine.virtual_images` (``centres=`` makes the mask and
    origin follow a descan; ``step=`` previews). Positions with zero total intensity give NaN.
    """
    shape = tuple(int(n) for n in data.shape[2:])
    s, wy, wx = virtual_images(data, com_masks(shape, centre, mask), **engine_kwargs)
    with np.errstate(divide="ignore", invalid="ignore"):
        cy = np.where(s != 0, wy / s, np.nan).astype(np.float32)
        cx = np.where(s != 0, wx / s, np.nan).astype(np.float32)
    if calibration is not None:
        dky, dkx = calibration.require_detector_mrad("CoM in mrad")
        cy *= np.float32(dky)
        cx *= np.float32(dkx)
    return cy, cx


def rotate_com(com_y: Any, com_x: Any, angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate the CoM vectors by ``angle_deg`` (counter-clockwise from +x towards +y).

    ``x' = cos θ x − sin θ y``, ``y' = sin θ x + cos θ y``: use it to bring detector axes onto the
    scan axes (the scan rotation).
    """
    t = np.deg2rad(float(angle_deg))
    cy, cx = np.asarray(com_y, np.float64), np.asarray(com_x, np.float64)
    return np.sin(t) * cx + np.cos(t) * cy, np.cos(t) * cx - np.sin(t) * cy


def integrate_com(
    com_y: Any, com_x: Any, step: tuple[float, float] = (1.0, 1.0), *, mirror: bool = False
) -> np.ndarray:
    """iCoM: the potential ``φ`` ``(Ny, Nx)`` whose gradient best matches ``(com_y, com_x)``.

    Fourier integration (least squares, periodic): ``φ̂ = −i (ky Ĝy + kx Ĝx) / (2π |k|²)`` with
    ``k`` in cycles per unit of ``step`` (scan step (dy, dx)); the mean of ``φ`` is set to 0.
    ``mirror=True`` integrates the even/odd mirrored extension (4× the area) to avoid
    wrap-around artefacts at the edges of non-periodic fields. NaNs are treated as 0.
    """
    gy = np.nan_to_num(np.asarray(com_y, np.float64))
    gx = np.nan_to_num(np.asarray(com_x, np.float64))
    if gy.ndim != 2 or gy.shape != gx.shape:
        raise EngineError(f"com_y and com_x must be 2D maps of one shape, got {gy.shape}, {gx.shape}")
    ny, nx = gy.shape
    if mirror:
        # φ even about both edges → ∂φ/∂y odd in y, even in x; ∂φ/∂x even in y, odd in x
        gy = np.block([[gy, gy[:, ::-1]], [-gy[::-1], -gy[::-1, ::-1]]])
        gx = np.block([[gx, -gx[:, ::-1]], [gx[::-1], -gx[::-1, ::-1]]])
    fy = np.fft.fftfreq(gy.shape[0], d=float(step[0]))[:, None]
    fx = np.fft.fftfreq(gy.shape[1], d=float(step[1]))[None, :]
    k2 = fy**2 + fx**2
    k2[0, 0] = 1.0
    phi_hat = -1j * (fy * np.fft.fft2(gy) + fx * np.fft.fft2(gx)) / (2 * np.pi * k2)
    phi_hat[0, 0] = 0.0
    phi = np.real(np.fft.ifft2(phi_hat))[:ny, :nx]
    return (phi - phi.mean()).astype(np.float32)


def curl(com_y: Any, com_x: Any) -> np.ndarray:
    """Curl ``∂gx/∂y − ∂gy/∂x`` of a CoM field (central differences)."""
    gy, gx = np.asarray(com_y, np.float64), np.asarray(com_x, np.float64)
    return np.gradient(gx, axis=0) - np.gradient(gy, axis=1)


def find_scan_rotation(
    com_y: Any, com_x: Any, angles_deg: Any = None
) -> tuple[float, bool]:
    """Scan rotation (deg, in [0, 180)) and transpose flag minimising the mean |curl|.

    Tries every angle of ``angles_deg`` (default 0..179 in 1° steps, refined by a parabola), with
    and without swapping the CoM axes. Curl cannot tell θ from θ + 180°: pick between them
    from the sign of the contrast (e.g. iCoM bright on atoms).
    """
    gy0, gx0 = np.nan_to_num(np.asarray(com_y, np.float64)), np.nan_to_num(np.asarray(com_x, np.float64))
    angles = np.arange(0.0, 180.0, 1.0) if angles_deg is None else np.asarray(angles_deg, np.float64)
    best = (np.inf, 0.0, False)
    for flip in (False, True):
        gy, gx = (gx0, gy0) if flip else (gy0, gx0)
        costs = np.array([np.mean(np.abs(curl(*rotate_com(gy, gx, a)))) for a in angles])
        i = int(np.argmin(costs))
        a = float(angles[i])
        if angles_deg is None and 0 < i < len(angles) - 1:
            c0, c1, c2 = costs[i - 1], costs[i], costs[i + 1]
            den = c0 - 2 * c1 + c2
            if den > 0:
                a += 0.5 * (c0 - c2) / den
        if costs[i] < best[0]:
            best = (float(costs[i]), a % 180.0, flip)
    return best[1], best[2]
