"""Unit strings found in files, mapped onto the package's tokens.

Scan (real-space) lengths are converted to Å; detector (reciprocal-space) steps to mrad or
Å⁻¹ (spatial frequency 1/d). Unknown or pixel units give ``None`` (uncalibrated).
"""

from __future__ import annotations

from typing import Any

import numpy as np

# factor to Å
_LENGTH_TO_A = {
    "a": 1.0, "å": 1.0, "ang": 1.0, "angstrom": 1.0, "angstroms": 1.0, "ångström": 1.0,
    "nm": 10.0, "nanometer": 10.0, "nanometre": 10.0, "nanometers": 10.0,
    "pm": 0.01, "um": 1e4, "µm": 1e4, "μm": 1e4, "micron": 1e4, "micrometer": 1e4,
    "mm": 1e7, "m": 1e10, "meter": 1e10, "metre": 1e10,
}
# factor to Å⁻¹
_INV_LENGTH_TO_INV_A = {
    "a^-1": 1.0, "å^-1": 1.0, "1/a": 1.0, "1/å": 1.0, "a-1": 1.0, "å-1": 1.0, "a⁻¹": 1.0,
    "å⁻¹": 1.0, "1/angstrom": 1.0, "angstrom^-1": 1.0,
    "nm^-1": 0.1, "1/nm": 0.1, "nm-1": 0.1, "nm⁻¹": 0.1, "1/nanometer": 0.1,
    "pm^-1": 100.0, "1/pm": 100.0, "m^-1": 1e-10, "1/m": 1e-10,
}
# factor to mrad
_ANGLE_TO_MRAD = {"mrad": 1.0, "milliradian": 1.0, "milliradians": 1.0, "rad": 1e3,
                  "radian": 1e3, "radians": 1e3, "urad": 1e-3, "µrad": 1e-3, "μrad": 1e-3}


def as_text(v: Any) -> str:
    """An HDF5/NumPy attribute as a stripped ``str`` (bytes decoded as UTF-8)."""
    if isinstance(v, np.ndarray) and v.shape == ():
        v = v[()]
    if isinstance(v, (bytes, np.bytes_)):
        v = bytes(v).decode("utf-8", "replace")
    return str(v).strip()


def _key(unit: Any) -> str:
    k = as_text(unit).lower().replace(" ", "").replace("**", "^").replace("−", "-")
    # EMD 0.2 style: "[n_m]", "[1/n_m]"
    return k.replace("[", "").replace("]", "").replace("_", "")


def length_to_A(value: float, unit: Any) -> float | None:
    """A real-space length in Å, or ``None`` when ``unit`` is not a length."""
    f = _LENGTH_TO_A.get(_key(unit))
    return None if f is None else float(value) * f


def detector_step(value: float, unit: Any) -> tuple[float, str] | None:
    """A detector step as ``(value, 'mrad')`` or ``(value, 'A^-1')``, or ``None``."""
    k = _key(unit)
    if k in _ANGLE_TO_MRAD:
        return float(value) * _ANGLE_TO_MRAD[k], "mrad"
    if k in _INV_LENGTH_TO_INV_A:
        return float(value) * _INV_LENGTH_TO_INV_A[k], "A^-1"
    return None


def pair(value: Any) -> tuple[float, float] | None:
    """A scalar or a 2-sequence as two positive finite floats, else ``None``."""
    try:
        arr = np.asarray(value, dtype=float).ravel()
    except (TypeError, ValueError):
        return None
    if arr.size == 1:
        arr = np.repeat(arr, 2)
    if arr.size != 2 or not np.all(np.isfinite(arr)) or not np.all(arr > 0):
        return None
    return float(arr[0]), float(arr[1])


def positive(value: Any) -> float | None:
    """A positive finite scalar, else ``None``."""
    try:
        arr = np.asarray(value, dtype=float).ravel()
    except (TypeError, ValueError):
        return None
    if arr.size != 1 or not np.isfinite(arr[0]) or arr[0] <= 0:
        return None
    return float(arr[0])
