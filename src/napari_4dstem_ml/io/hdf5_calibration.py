"""Calibrations stated in HDF5 files, each with the field it came from.

Every function here returns a :class:`Found`: calibration changes (``Calibration`` keyword
arguments) and, per calibration, its source (see ``Calibration.sources``). The HDF5 reader
applies them in this order, later ones overriding earlier ones:

1. EMD dim vectors ``dim0..dim3`` (or ``dim1..dim4``) beside the data in an EMD array group:
   step = ``v[1] - v[0]``, unit from the ``units`` attribute (``pixels`` is uncalibrated).
2. Prismatic simulations (EMD 0.5, ``4DSTEM_simulation``): the simulation parameters
   ``E`` (keV), ``sa`` (probe semi-angle, mrad), ``rx``/``ry`` (probe step, Å). Prismatic labels
   its dim vectors ``[n_m]`` and ``[n_m^-1]`` but writes them in Å and Å⁻¹ (the probe step
   equals ``rx``; the reciprocal step is 1/cell), so they are read as Å and Å⁻¹.
3. py4DSTEM calibration metadata (``metadatabundle/calibration`` or ``_metadata/calibration``):
   ``R_pixel_size``/``R_pixel_units``, ``Q_pixel_size``/``Q_pixel_units``,
   ``convergence_semiangle_mrad``.
4. FEI/Thermo Fisher TIA tags copied into the file (e.g. by the ``fpd`` package):
   ``tags/ObjectInfo/ExperimentalDescription`` ``High tension_kV``, ``Camera length_m``, or
   ``ExperimentalConditions/MicroscopeConditions/AcceleratingVoltage`` (V).
5. NeXus NXmx (Dectris): ``entry/instrument/detector/detectorSpecific/photon_energy`` (eV), or
   ``entry/instrument/beam/incident_wavelength`` (Å); with a ``detector_distance`` > 0, the
   detector angle per pixel = ``x_pixel_size`` / ``detector_distance``.
6. This project's own attributes, on the file, the groups down to the dataset, then the dataset
   (nearest wins): ``scan_step_A``, ``detector_pixel_mrad`` or ``detector_pixel_inv_A``,
   ``energy_ev``, ``convergence_mrad``, ``camera_length_m``.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .units import as_text, detector_step, length_to_A, pair, positive

_EMD_ARRAY = ("array", 1)
#: groups visited at most when looking for vendor metadata (TIA tags) in a file
_MAX_GROUPS = 400


@dataclass
class Found:
    """Calibration keyword arguments found in a file, and where each came from."""

    changes: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)

    def put(self, name: str, value: Any, source: str, **extra: Any) -> None:
        self.changes[name] = value
        self.changes.update(extra)
        self.sources[name] = source

    def update(self, other: Found) -> None:
        self.changes.update(other.changes)
        self.sources.update(other.sources)


def read_value(group, key: str) -> Any:
    """An attribute or a small dataset of ``group`` (text decoded), else ``None``."""
    import h5py

    if key in group.attrs:
        return group.attrs[key]
    obj = group.get(key)
    if isinstance(obj, h5py.Dataset) and obj.size <= 16:
        v = obj[()]
        if isinstance(v, (bytes, np.bytes_, str)):
            v = as_text(v)
            return None if v == "_None" else v
        return v
    return None


def is_emd_array(group) -> bool:
    t = group.attrs.get("emd_group_type")
    if t is None:
        return False
    t = as_text(t) if isinstance(t, (bytes, str, np.bytes_)) else t
    try:
        return t in _EMD_ARRAY or int(t) == 1
    except (TypeError, ValueError):
        return False


def _dim_steps(group) -> list[tuple[float, Any] | None]:
    base = 0 if "dim0" in group else 1 if "dim1" in group else None
    steps: list[tuple[float, Any] | None] = []
    for i in range(4):
        d = None if base is None else group.get(f"dim{i + base}")
        if d is None or getattr(d, "ndim", 0) != 1 or d.shape[0] < 2:
            steps.append(None)
            continue
        v = d[:2].astype(float)
        steps.append((abs(float(v[1] - v[0])), d.attrs.get("units", "")))
    return steps


def emd_dims(dset) -> Found:
    """Scan step and detector pixel from the EMD dim vectors beside a 4D dataset."""
    out = Found()
    group = dset.parent
    if dset.ndim != 4 or not is_emd_array(group):
        return out
    steps = _dim_steps(group)
    where = f"EMD dim vectors of {group.name}"
    if steps[0] and steps[1]:
        s = [length_to_A(*st) for st in steps[:2]]
        if all(x and x > 0 for x in s):
            unit = as_text(steps[0][1])
            out.put("scan_step", (s[0], s[1]), f"{where} (scan axes, {unit})", scan_units="A")
    if steps[2] and steps[3]:
        d = [detector_step(*st) for st in steps[2:]]
        if all(d) and d[0][1] == d[1][1] and d[0][0] > 0 and d[1][0] > 0:
            unit = as_text(steps[2][1])
            out.put("detector_pixel", (d[0][0], d[1][0]), f"{where} (detector axes, {unit})",
                    detector_units=d[0][1])
    return out


def prismatic(f, dset) -> Found:
    """A Prismatic simulation's parameters (see the module docstring)."""
    out = Found()
    params = f.get("4DSTEM_simulation/metadata/metadata_0/original/simulation_parameters")
    if params is None:
        return out
    a = params.attrs
    where = "Prismatic simulation_parameters"
    e = positive(a.get("E"))
    if e:
        out.put("energy_ev", e * 1e3, f"{where} E (keV)")
    sa = positive(a.get("sa"))
    if sa:
        out.put("convergence_mrad", sa, f"{where} sa (probe semi-angle, mrad)")
    ry, rx = positive(a.get("ry")), positive(a.get("rx"))
    if rx and ry:
        out.put("scan_step", (ry, rx), f"{where} ry, rx (probe step, Å)", scan_units="A")
    if dset.ndim == 4:
        steps = _dim_steps(dset.parent)
        if steps[2] and steps[3] and steps[2][0] > 0 and steps[3][0] > 0:
            out.put("detector_pixel", (steps[2][0], steps[3][0]),
                    f"EMD dim vectors of {dset.parent.name} (Å⁻¹; Prismatic labels them [n_m^-1])",
                    detector_units="A^-1")
    return out


def py4dstem(groups: list) -> Found:
    """py4DSTEM calibration metadata in the array group or any group above it."""
    out = Found()
    for g in groups:  # root first, nearest last (wins)
        for bundle in ("metadatabundle", "_metadata"):
            cal = g.get(f"{bundle}/calibration")
            if cal is None:
                continue
            where = f"py4DSTEM calibration {cal.name}"
            r, ru = read_value(cal, "R_pixel_size"), read_value(cal, "R_pixel_units")
            q, qu = read_value(cal, "Q_pixel_size"), read_value(cal, "Q_pixel_units")
            rp = pair(r) if r is not None else None
            if rp and ru is not None:
                s = [length_to_A(v, ru) for v in rp]
                if all(s):
                    out.put("scan_step", (s[0], s[1]), f"{where}: R_pixel_size ({as_text(ru)})",
                            scan_units="A")
            qp = pair(q) if q is not None else None
            if qp and qu is not None:
                d = [detector_step(v, qu) for v in qp]
                if all(d):
                    out.put("detector_pixel", (d[0][0], d[1][0]),
                            f"{where}: Q_pixel_size ({as_text(qu)})", detector_units=d[0][1])
            c = positive(read_value(cal, "convergence_semiangle_mrad"))
            if c:
                out.put("convergence_mrad", c, f"{where}: convergence_semiangle_mrad")
    return out


def _groups(f, limit: int = _MAX_GROUPS):
    """Groups of ``f`` breadth first, at most ``limit`` (external links are not followed)."""
    import h5py

    queue, seen = [f], 0
    while queue and seen < limit:
        g = queue.pop(0)
        seen += 1
        yield g
        for name in g:
            link = g.get(name, getlink=True)
            if isinstance(link, h5py.HardLink) and isinstance(g.get(name), h5py.Group):
                queue.append(g[name])


def tia_tags(f) -> Found:
    """Beam energy and camera length from TIA tags stored in the file (the ``fpd`` package
    copies them beside a Merlin scan as ``.../tags/ObjectInfo``)."""
    out = Found()
    for g in _groups(f):
        info = g.get("tags/ObjectInfo") if posixpath.basename(g.name) != "tags" else None
        if info is None:
            continue
        desc = info.get("ExperimentalDescription")
        cond = info.get("ExperimentalConditions/MicroscopeConditions")
        where = f"TIA tags {info.name}"
        kv = positive(_number(read_value(desc, "High tension_kV"))) if desc is not None else None
        volts = positive(_number(read_value(cond, "AcceleratingVoltage"))) if cond is not None else None
        if kv:
            out.put("energy_ev", kv * 1e3, f"{where}/ExperimentalDescription/High tension_kV")
        elif volts:
            out.put("energy_ev", volts,
                    f"{where}/ExperimentalConditions/MicroscopeConditions/AcceleratingVoltage (V)")
        cl = positive(_number(read_value(desc, "Camera length_m"))) if desc is not None else None
        if cl:
            out.put("camera_length_m", cl, f"{where}/ExperimentalDescription/Camera length_m")
        if out.changes:
            return out
    return out


def _number(v: Any) -> float | None:
    """A number from an attribute that may be text (TIA tags store ``b'200000'``)."""
    if v is None:
        return None
    if isinstance(v, (bytes, np.bytes_, str)):
        try:
            return float(as_text(v).split()[0])
        except (ValueError, IndexError):
            return None
    return positive(v)


def nexus(f) -> Found:
    """Beam energy and detector angle per pixel from a NeXus NXmx (Dectris) file."""
    out = Found()
    det = f.get("entry/instrument/detector")
    if det is None:
        return out
    e = positive(_number(read_value(det, "detectorSpecific/photon_energy"))) \
        if det.get("detectorSpecific") is not None else None
    if e:
        out.put("energy_ev", e, f"NeXus {det.name}/detectorSpecific/photon_energy (eV)")
    else:
        wl = positive(_number(read_value(f["entry"], "instrument/beam/incident_wavelength")))
        if wl:
            from ..dataset import energy_from_wavelength_ev

            out.put("energy_ev", energy_from_wavelength_ev(wl),
                    "NeXus entry/instrument/beam/incident_wavelength (Å)")
    px = positive(_number(read_value(det, "x_pixel_size")))
    py = positive(_number(read_value(det, "y_pixel_size")))
    dist = positive(_number(read_value(det, "detector_distance")))
    if px and py and dist:
        out.put("detector_pixel", (py / dist * 1e3, px / dist * 1e3),
                f"NeXus {det.name}: y|x_pixel_size / detector_distance", detector_units="mrad")
    return out


def attributes(objs: list) -> tuple[Found, tuple[int, int] | None]:
    """This project's calibration attributes (and ``scan_shape``), nearest object last."""
    from .errors import ReaderError
    from .shapes import normalize_scan_shape

    out = Found()
    scan_shape = None
    for o in objs:  # root first, dataset last (wins)
        a = o.attrs
        where = f"attribute of {o.name}"
        if "scan_step_A" in a and pair(a["scan_step_A"]):
            out.put("scan_step", pair(a["scan_step_A"]), f"scan_step_A {where}", scan_units="A")
        if "detector_pixel_mrad" in a and pair(a["detector_pixel_mrad"]):
            out.put("detector_pixel", pair(a["detector_pixel_mrad"]),
                    f"detector_pixel_mrad {where}", detector_units="mrad")
        if "detector_pixel_inv_A" in a and pair(a["detector_pixel_inv_A"]):
            out.put("detector_pixel", pair(a["detector_pixel_inv_A"]),
                    f"detector_pixel_inv_A {where}", detector_units="A^-1")
        for key in ("energy_ev", "convergence_mrad", "camera_length_m"):
            if key in a and positive(a[key]):
                out.put(key, positive(a[key]), f"{key} {where}")
        if "scan_shape" in a:
            try:
                scan_shape = normalize_scan_shape(a["scan_shape"])
            except ReaderError:
                pass
    return out, scan_shape


def ancestors(obj) -> list:
    """The object's groups from the file root down to its parent."""
    chain = []
    g = obj.parent
    while True:
        chain.append(g)
        if g.name == "/":
            break
        g = g.parent
    return chain[::-1]


def calibration_of(f, dset) -> tuple[Found, tuple[int, int] | None]:
    """Everything the file states about ``dset``'s calibration, in the order of the module
    docstring, and a ``scan_shape`` attribute if there is one."""
    groups = ancestors(dset)
    found = Found()
    found.update(emd_dims(dset))
    found.update(prismatic(f, dset))
    found.update(py4dstem(groups))
    found.update(tia_tags(f))
    found.update(nexus(f))
    attrs, scan_shape = attributes([*groups, dset])
    found.update(attrs)
    return found, scan_shape
