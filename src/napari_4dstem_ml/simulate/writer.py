"""Write a simulated sample to HDF5 in the EMD 1.0 / py4DSTEM-compatible layout.

Layout: root attrs ``emd_group_type="root"``, ``version_major=1``, ``version_minor=0`` and
every simulation parameter; ``/datacube`` (``emd_group_type="array"``) with ``data``
``(scan_y, scan_x, ky, kx)`` integer counts, gzip-compressed, chunked by scan row, and
``dim1..dim4`` (Å, Å, mrad, mrad); ``/label/image``, ``/ground_truth/potential``,
``/adf/image`` and, when given, ``/vacancy/sites`` (row, col in scan pixels) and further
datasets (``extras``, e.g. ``/noise_free/patterns``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class SampleArrays:
    """Everything that goes into one sample file. Scan-grid images are ``(scan_y, scan_x)``."""

    counts: np.ndarray  # (ny, nx, ky, kx) integer
    scan_step_A: tuple[float, float]
    detector_pixel_mrad: tuple[float, float]
    energy_ev: float
    convergence_mrad: float
    label: np.ndarray
    label_pixel_A: float
    label_origin_A: tuple[float, float]
    label_method: str
    ground_truth: np.ndarray
    ground_truth_units: str
    adf: np.ndarray
    adf_inner_mrad: float
    adf_outer_mrad: float
    params: dict[str, Any] = field(default_factory=dict)
    vacancy_sites: np.ndarray | None = None
    vacancy_description: str = "sulfur monovacancy site(s): one S of an S2 column removed"
    #: further datasets: HDF5 path -> (array, attributes); 4D arrays are chunked like the data
    extras: dict[str, tuple[np.ndarray, dict[str, Any]]] = field(default_factory=dict)


def _attr(v: Any) -> Any:
    if isinstance(v, (dict, list, tuple)) and not (
        isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) for x in v)
    ):
        return json.dumps(v)
    if v is None:
        return "none"
    return v


def write_sample(path: str | Path, s: SampleArrays, compression: str = "gzip") -> Path:
    """Write ``s`` to ``path`` (atomically: a temporary file renamed at the end)."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    ny, nx, nky, nkx = s.counts.shape
    copts: dict[str, Any] = {"compression": compression, "shuffle": True}
    if compression == "gzip":
        copts["compression_opts"] = 6
    with h5py.File(tmp, "w") as f:
        f.attrs["emd_group_type"] = "root"
        f.attrs["version_major"] = 1
        f.attrs["version_minor"] = 0
        for k, v in s.params.items():
            f.attrs[k] = _attr(v)
        g = f.create_group("datacube")
        g.attrs["emd_group_type"] = "array"
        g.attrs["name"] = "datacube"
        for k, v in s.params.items():
            g.attrs[k] = _attr(v)
        d = g.create_dataset("data", data=s.counts, chunks=(1, nx, nky, nkx), **copts)
        d.attrs["scan_step_A"] = np.asarray(s.scan_step_A, float)
        d.attrs["detector_pixel_mrad"] = np.asarray(s.detector_pixel_mrad, float)
        d.attrs["energy_ev"] = float(s.energy_ev)
        d.attrs["convergence_mrad"] = float(s.convergence_mrad)
        d.attrs["units"] = "counts"
        dims = [
            ("R_y", "A", s.scan_step_A[0], ny, 0.0),
            ("R_x", "A", s.scan_step_A[1], nx, 0.0),
            ("Q_y", "mrad", s.detector_pixel_mrad[0], nky, -(nky - 1) / 2),
            ("Q_x", "mrad", s.detector_pixel_mrad[1], nkx, -(nkx - 1) / 2),
        ]
        for i, (name, unit, step, n, first) in enumerate(dims, start=1):
            v = g.create_dataset(f"dim{i}", data=(np.arange(n) + first) * step)
            v.attrs["name"] = name
            v.attrs["units"] = unit

        lab = f.create_group("label")
        li = lab.create_dataset("image", data=np.asarray(s.label, np.float32), **copts)
        li.attrs["pixel_size_A"] = float(s.label_pixel_A)
        li.attrs["origin_A"] = np.asarray(s.label_origin_A, float)
        li.attrs["label_method"] = s.label_method
        li.attrs["units"] = "rad"
        lab.attrs["label_method"] = s.label_method

        gt = f.create_group("ground_truth")
        gd = gt.create_dataset("potential", data=np.asarray(s.ground_truth, np.float32), **copts)
        gd.attrs["units"] = s.ground_truth_units
        gd.attrs["pixel_size_A"] = np.asarray(s.scan_step_A, float)
        gd.attrs["origin_A"] = np.zeros(2)

        adf = f.create_group("adf")
        ad = adf.create_dataset("image", data=np.asarray(s.adf, np.float32), **copts)
        ad.attrs["inner_mrad"] = float(s.adf_inner_mrad)
        ad.attrs["outer_mrad"] = float(s.adf_outer_mrad)
        ad.attrs["units"] = "counts"
        ad.attrs["pixel_size_A"] = np.asarray(s.scan_step_A, float)

        if s.vacancy_sites is not None:
            vg = f.create_group("vacancy")
            vs = vg.create_dataset("sites", data=np.asarray(s.vacancy_sites, float))
            vs.attrs["units"] = "scan pixels (row, col)"
            vg.attrs["description"] = s.vacancy_description

        for name, (arr, attrs) in s.extras.items():
            arr = np.asarray(arr)
            opts = dict(copts) if arr.size > 1 else {}
            if arr.ndim == 4:
                opts["chunks"] = (1, *arr.shape[1:])
            ds = f.create_dataset(name, data=arr, **opts)
            for k, v in attrs.items():
                ds.attrs[k] = _attr(v)
    tmp.replace(path)
    return path
