"""What a ptychographic reconstruction is asked to do: :class:`PtychoConfig` (frozen, JSON).

Units: lengths in Å, angles in mrad; ``defocus_A`` follows the back end's convention
(quantem/py4DSTEM: defocus = −C10, positive = focused below the entrance surface, i.e.
underfocus).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

MODES = ("single-slice", "multislice")


@dataclass(frozen=True)
class PtychoConfig:
    """Settings of one label reconstruction (gradient-descent ptychography).

    ``bin_factor`` sums bin × bin detector pixels; the binned patterns are zero-padded to
    ``padded_size`` pixels, which sets the object pixel λ / (padded_size · bin · detector
    pixel) (``None``: no padding). ``mode`` "single-slice" (thin samples) or "multislice"
    with ``slices`` slices of ``slice_thickness_A`` each. ``iterations`` passes over all
    patterns in batches of ``batch_size``; Adam-type steps ``lr_object`` and ``lr_probe``
    (the probe is refined when ``learn_probe``). The probe starts from the aperture ``α``
    of the calibration and ``defocus_A``. ``rotation_deg`` forces the scan-to-detector
    rotation (``None``: fitted from the centre of mass). ``half_data_frc``: also reconstruct
    the two halves of the scan (a checkerboard of positions) for the FRC self-consistency.
    ``sample_thickness_A`` (optional, what the user knows) is used only for the trust check.
    """

    backend: str = "quantem"
    mode: str = "single-slice"
    slices: int = 1
    slice_thickness_A: float | None = None
    iterations: int = 8
    bin_factor: int = 2
    padded_size: int | None = 128
    batch_size: int = 256
    lr_object: float = 5e-3
    lr_probe: float = 1e-3
    learn_probe: bool = True
    defocus_A: float = 0.0
    rotation_deg: float | None = 0.0
    half_data_frc: bool = True
    sample_thickness_A: float | None = None
    seed: int = 1
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        for name in ("slices", "iterations", "bin_factor", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.mode == "single-slice" and self.slices != 1:
            raise ValueError(f"single-slice mode has one slice, got slices={self.slices}")
        if self.mode == "multislice":
            if self.slices < 2:
                raise ValueError(f"multislice mode needs at least 2 slices, got {self.slices}")
            t = self.slice_thickness_A
            if t is None or not (math.isfinite(t) and t > 0):
                raise ValueError("multislice mode needs slice_thickness_A (Å) > 0")
        if self.padded_size is not None and (not isinstance(self.padded_size, int)
                                             or self.padded_size < 8):
            raise ValueError(f"padded_size must be an integer >= 8 or None, got {self.padded_size!r}")
        for name in ("lr_object", "lr_probe"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        for name in ("defocus_A",):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite")
        if self.rotation_deg is not None and not math.isfinite(self.rotation_deg):
            raise ValueError("rotation_deg must be finite or None")
        if self.sample_thickness_A is not None and not (
                math.isfinite(self.sample_thickness_A) and self.sample_thickness_A > 0):
            raise ValueError(f"sample_thickness_A must be > 0, got {self.sample_thickness_A!r}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {self.device!r}")

    def with_(self, **changes: Any) -> PtychoConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PtychoConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown PtychoConfig fields: {sorted(unknown)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> PtychoConfig:
        return cls.from_dict(json.loads(s))

    def resume_key(self) -> dict[str, Any]:
        """The settings a saved state must share to be resumed (``iterations`` may grow)."""
        d = self.to_dict()
        for k in ("iterations", "half_data_frc", "sample_thickness_A", "device"):
            d.pop(k)
        return d
