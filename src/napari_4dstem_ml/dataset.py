"""The in-memory description of a 4D-STEM data set: a lazy array plus calibrations.

Axis order everywhere in this package: ``(scan_y, scan_x, ky, kx)``. Scan axes are
calibrated in ångström (Å) per scan step, detector axes in mrad or Å⁻¹ per pixel.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

#: canonical unit tokens (ASCII, so they survive HDF5/JSON round trips)
SCAN_UNITS = ("A", "nm", "pixels")
DETECTOR_UNITS = ("mrad", "A^-1", "pixels")

# electron rest energy (eV), h*c (eV*Å)
_M0C2_EV = 510998.95
_HC_EV_A = 12398.419843320026


def electron_wavelength_A(energy_ev: float) -> float:
    """Relativistic electron wavelength in Å for an accelerating voltage ``energy_ev`` (eV)."""
    e = float(energy_ev)
    return _HC_EV_A / math.sqrt(e * (2.0 * _M0C2_EV + e))


#: the calibrations a data set can state, in the order they are shown
CALIBRATION_FIELDS = ("scan_step", "detector_pixel", "energy_ev", "convergence_mrad",
                      "camera_length_m", "scan_rotation_deg")
#: ``Calibration.sources`` value of a calibration typed by the user (CLI option, GUI field)
USER = "user"


def energy_from_wavelength_ev(wavelength_A: float) -> float:
    """Accelerating voltage (eV) of electrons of relativistic wavelength ``wavelength_A`` (Å)."""
    pc = _HC_EV_A / float(wavelength_A)
    return math.sqrt(_M0C2_EV**2 + pc**2) - _M0C2_EV


@dataclass(frozen=True)
class Calibration:
    """Calibrations of a 4D data set. Any field may be ``None`` when the file does not say.

    ``scan_step`` is (dy, dx) in ``scan_units`` per scan position; ``detector_pixel`` is
    (dky, dkx) in ``detector_units`` per detector pixel (mrad or Å⁻¹, the latter meaning
    spatial frequency 1/d, i.e. angle = λ·k); ``scan_rotation_deg`` is the scan's rotation
    relative to the detector (degrees), as the file states it.

    ``sources`` says where each calibration came from, by field name (one of
    :data:`CALIBRATION_FIELDS`): the header field that stated it (e.g. ``"EMPAD XML
    iom_measurements/high_voltage"``), ``"user"`` (typed on the command line or in the GUI),
    or how it was derived. Provenance does not take part in equality.
    """

    scan_step: tuple[float, float] | None = None
    scan_units: str = "A"
    detector_pixel: tuple[float, float] | None = None
    detector_units: str = "mrad"
    energy_ev: float | None = None
    convergence_mrad: float | None = None
    camera_length_m: float | None = None
    scan_rotation_deg: float | None = None
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.scan_units not in SCAN_UNITS:
            raise ValueError(f"scan_units must be one of {SCAN_UNITS}, got {self.scan_units!r}")
        if self.detector_units not in DETECTOR_UNITS:
            raise ValueError(
                f"detector_units must be one of {DETECTOR_UNITS}, got {self.detector_units!r}"
            )
        for name in ("scan_step", "detector_pixel"):
            v = getattr(self, name)
            if v is not None:
                v = tuple(float(x) for x in (v if np.ndim(v) else (v, v)))
                if len(v) != 2 or not all(x > 0 and math.isfinite(x) for x in v):
                    raise ValueError(f"{name} must be two positive numbers, got {v!r}")
                object.__setattr__(self, name, v)
        for name in ("energy_ev", "convergence_mrad", "camera_length_m"):
            v = getattr(self, name)
            if v is not None:
                v = float(v)
                if not (v > 0 and math.isfinite(v)):
                    raise ValueError(f"{name} must be a positive number, got {v!r}")
                object.__setattr__(self, name, v)
        if self.scan_rotation_deg is not None:
            v = float(self.scan_rotation_deg)
            if not math.isfinite(v):
                raise ValueError(f"scan_rotation_deg must be a finite number, got {v!r}")
            object.__setattr__(self, "scan_rotation_deg", v)
        known = {k: str(v) for k, v in dict(self.sources or {}).items()
                 if k in CALIBRATION_FIELDS and getattr(self, k) is not None}
        object.__setattr__(self, "sources", known)

    def source_of(self, name: str) -> str | None:
        """Where calibration ``name`` came from, or ``None`` (unknown, or not set)."""
        return self.sources.get(name)

    # -- derived quantities -------------------------------------------------
    @property
    def wavelength_A(self) -> float | None:
        """Electron wavelength in Å, or ``None`` without a beam energy."""
        return None if self.energy_ev is None else electron_wavelength_A(self.energy_ev)

    @property
    def scan_step_A(self) -> tuple[float, float] | None:
        """Scan step (dy, dx) in Å, or ``None`` when uncalibrated."""
        if self.scan_step is None or self.scan_units == "pixels":
            return None
        f = 10.0 if self.scan_units == "nm" else 1.0
        return (self.scan_step[0] * f, self.scan_step[1] * f)

    @property
    def detector_pixel_mrad(self) -> tuple[float, float] | None:
        """Detector pixel (dky, dkx) in mrad, converting from Å⁻¹ with the wavelength."""
        if self.detector_pixel is None or self.detector_units == "pixels":
            return None
        if self.detector_units == "mrad":
            return self.detector_pixel
        lam = self.wavelength_A
        if lam is None:
            return None
        return (self.detector_pixel[0] * lam * 1e3, self.detector_pixel[1] * lam * 1e3)

    def require_detector_mrad(self, what: str = "this operation") -> tuple[float, float]:
        """Detector pixel in mrad, or a ``ValueError`` that says which calibration is missing."""
        px = self.detector_pixel_mrad
        if px is None:
            if self.detector_pixel is None or self.detector_units == "pixels":
                raise ValueError(f"{what} needs the detector pixel size (mrad or Å⁻¹); the data set has none")
            raise ValueError(
                f"{what} needs the beam energy to convert the detector pixel from Å⁻¹ to mrad; "
                "the data set has none"
            )
        return px

    def with_(self, source: str | None = None, **changes: Any) -> Calibration:
        """Copy with some fields changed. ``source`` is recorded as the provenance of every
        changed calibration; without it, a changed calibration's old provenance is dropped."""
        sources = dict(self.sources)
        for name in changes:
            if name in CALIBRATION_FIELDS:
                sources.pop(name, None)
                if source is not None:
                    sources[name] = source
        changes.setdefault("sources", sources)
        return replace(self, **changes)

    # -- serialisation ------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sources"] = dict(self.sources)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, s: str) -> Calibration:
        return cls.from_dict(json.loads(s))

    def describe(self) -> str:
        """One human-readable line per calibration, with where it came from."""

        def line(name: str, label: str, text: str | None) -> str:
            if text is None:
                return f"{label}: unknown"
            src = self.sources.get(name)
            return f"{label}: {text}" + (f"  [{src}]" if src else "")

        s, d = self.scan_step, self.detector_pixel
        lines = [
            line("scan_step", "scan step",
                 f"{s[0]:.4g} x {s[1]:.4g} {pretty_unit(self.scan_units)}" if s else None),
            line("detector_pixel", "detector pixel",
                 f"{d[0]:.4g} x {d[1]:.4g} {pretty_unit(self.detector_units)}" if d else None),
            line("energy_ev", "beam energy",
                 f"{self.energy_ev / 1e3:.4g} keV" if self.energy_ev else None),
            line("convergence_mrad", "convergence semi-angle",
                 f"{self.convergence_mrad:.4g} mrad" if self.convergence_mrad else None),
        ]
        if self.detector_units == "A^-1" and d and self.detector_pixel_mrad:
            m = self.detector_pixel_mrad
            lines[1] += f" (= {m[0]:.4g} x {m[1]:.4g} mrad at this energy)"
        if self.camera_length_m:
            lines.append(line("camera_length_m", "camera length", f"{self.camera_length_m:.4g} m"))
        if self.scan_rotation_deg is not None:
            lines.append(line("scan_rotation_deg", "scan rotation", f"{self.scan_rotation_deg:.4g}°"))
        return "\n".join(lines)

    def info(self) -> dict[str, Any]:
        """The calibrations in fixed units for machines (``stemml info --json``): scan step
        [y, x] in Å, energy in keV, detector pixel [y, x] in mrad, convergence in mrad, camera
        length in m, scan rotation in degrees (``None`` where unknown), and ``sources``."""
        step = self.scan_step_A
        px = self.detector_pixel_mrad
        out: dict[str, Any] = {
            "scan_step_angstrom": list(step) if step else None,
            "energy_kev": None if self.energy_ev is None else self.energy_ev / 1e3,
            "detector_pixel_mrad": list(px) if px else None,
            "detector_pixel_inv_angstrom": (list(self.detector_pixel)
                                            if self.detector_pixel and self.detector_units == "A^-1"
                                            else None),
            "convergence_mrad": self.convergence_mrad,
            "camera_length_m": self.camera_length_m,
            "scan_rotation_deg": self.scan_rotation_deg,
        }
        names = {"scan_step": "scan_step_angstrom", "energy_ev": "energy_kev",
                 "detector_pixel": "detector_pixel_mrad", "convergence_mrad": "convergence_mrad",
                 "camera_length_m": "camera_length_m", "scan_rotation_deg": "scan_rotation_deg"}
        out["sources"] = {names[k]: v for k, v in self.sources.items()}
        return out


def pretty_unit(token: str) -> str:
    """Display form of a unit token ('A' -> 'Å', 'A^-1' -> 'Å⁻¹')."""
    return {"A": "Å", "A^-1": "Å⁻¹", "nm": "nm", "mrad": "mrad", "pixels": "px"}.get(token, token)


def napari_unit(token: str) -> str:
    """A unit string napari (pint) parses."""
    return {"A": "angstrom", "A^-1": "1/angstrom", "nm": "nanometer", "mrad": "milliradian", "pixels": "pixel"}.get(
        token, "pixel"
    )


@dataclass
class Dataset4D:
    """A 4D-STEM data set: ``data`` is ``(scan_y, scan_x, ky, kx)``, lazy where possible.

    ``data`` is a NumPy array (often a read-only ``np.memmap``) or a Dask array; nothing
    here reads it whole. ``source`` is the file it came from, ``reader`` the name of the
    reader that opened it, ``metadata`` anything else the file said.
    """

    data: Any
    calibration: Calibration = field(default_factory=Calibration)
    source: Path | None = None
    reader: str = "array"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if getattr(self.data, "ndim", None) != 4:
            raise ValueError(
                "a 4D-STEM data set must be 4D (scan_y, scan_x, ky, kx), "
                f"got shape {getattr(self.data, 'shape', None)}"
            )

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(int(n) for n in self.data.shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def scan_shape(self) -> tuple[int, int]:
        return self.shape[0], self.shape[1]

    @property
    def detector_shape(self) -> tuple[int, int]:
        return self.shape[2], self.shape[3]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    @property
    def input_files(self) -> tuple[str, ...]:
        """Every file the data set is read from: ``source`` and what the reader lists in
        ``metadata`` (an EMPAD XML, HDF5 external files, ...). Outputs must not overwrite them."""
        m = self.metadata
        files = [self.source, m.get("raw_file"), m.get("xml_file"), *m.get("input_files", ())]
        return tuple(dict.fromkeys(str(f) for f in files if f))

    @property
    def notes(self) -> list[str]:
        """What the reader noticed and the user should know (header oddities, guesses)."""
        m = self.metadata
        return [str(n) for n in (*m.get("header_notes", ()), *m.get("notes", ()))]

    @property
    def is_lazy(self) -> bool:
        return isinstance(self.data, np.memmap) or type(self.data).__module__.startswith("dask")

    @property
    def scan_shape_known(self) -> bool:
        """False for a stack of frames opened without a scan shape (viewed as one scan row of
        ``metadata["n_frames"]`` positions until :meth:`with_scan_shape` is given one)."""
        return not self.metadata.get("scan_shape_unknown", False)

    def with_scan_shape(self, scan_shape: tuple[int, int], source: str = USER) -> Dataset4D:
        """The same frames viewed as a ``(ny, nx)`` scan (frame ``i = iy * nx + ix``), lazily,
        without re-reading; ``ValueError`` naming the frame count when ``ny * nx`` does not fit."""
        from .io.shapes import describe_factorisations

        ny, nx = (int(v) for v in scan_shape)
        n = self.shape[0] * self.shape[1]
        if ny < 1 or nx < 1 or ny * nx != n:
            where = f"{self.source}: " if self.source else ""
            raise ValueError(f"{where}scan shape {ny} x {nx} = {ny * nx} positions does not fit "
                             f"the {n} frames ({describe_factorisations(n)})")
        data = self.data.reshape((ny, nx, *self.detector_shape))
        meta = {**self.metadata, "scan_shape_from": source}
        meta.pop("scan_shape_unknown", None)
        return replace(self, data=data, metadata=meta)

    def pattern(self, iy: int, ix: int) -> np.ndarray:
        """One diffraction pattern ``(ky, kx)`` as a NumPy array."""
        return np.asarray(self.data[iy, ix])

    def as_dask(self, rows_per_chunk: int | None = None):
        """The data as a Dask array chunked over scan rows (detector axes whole)."""
        import dask.array as da

        if type(self.data).__module__.startswith("dask"):
            return self.data
        if rows_per_chunk is None:
            row_bytes = self.shape[1] * self.shape[2] * self.shape[3] * self.dtype.itemsize
            rows_per_chunk = max(1, int(64e6 // max(row_bytes, 1)))
        return da.from_array(self.data, chunks=(rows_per_chunk, -1, -1, -1))

    def scale(self) -> tuple[float, float, float, float]:
        """Per-axis scale for display: scan step and detector pixel (1 when unknown)."""
        c = self.calibration
        s = c.scan_step or (1.0, 1.0)
        d = c.detector_pixel or (1.0, 1.0)
        return (s[0], s[1], d[0], d[1])

    def units(self) -> tuple[str, str, str, str]:
        """Per-axis unit tokens matching :meth:`scale`."""
        c = self.calibration
        su = c.scan_units if c.scan_step else "pixels"
        du = c.detector_units if c.detector_pixel else "pixels"
        return (su, su, du, du)

    def info(self) -> dict[str, Any]:
        """What ``stemml info --json`` prints and the napari layer's metadata holds: reader,
        file, shapes, dtype and the calibrations with their sources (see
        :meth:`Calibration.info`)."""
        ny, nx, ky, kx = self.shape
        out: dict[str, Any] = {
            "file": None if self.source is None else str(self.source),
            "reader": self.reader,
            "dataset": self.metadata.get("dataset"),
            "scan_shape": [ny, nx],
            "detector_shape": [ky, kx],
            "dtype": str(self.dtype),
        }
        out.update(self.calibration.info())
        if self.metadata.get("scan_shape_from"):
            out["sources"]["scan_shape"] = str(self.metadata["scan_shape_from"])
        out["notes"] = self.notes
        return out

    def summary(self) -> str:
        """Shape, dtype, reader, source and calibrations, for ``stemml info``."""
        ny, nx, ky, kx = self.shape
        lines = [
            f"file: {self.source}" if self.source else "file: (in memory)",
            f"reader: {self.reader}",
            f"shape (scan_y, scan_x, ky, kx): {ny} x {nx} x {ky} x {kx}",
            f"dtype: {self.dtype}",
            f"size: {self.nbytes / 1e9:.3g} GB ({'lazy' if self.is_lazy else 'in memory'})",
            self.calibration.describe(),
        ]
        if self.metadata.get("scan_shape_from"):
            lines.insert(3, f"scan shape from: {self.metadata['scan_shape_from']}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)
