"""The shipped sample data sets: where they are, and loading them headless.

Two simulated samples (see ``sample_data/README.md``): ``"mos2"`` (training, with a
ptychography-like label) and ``"prsco3"`` (test). Files are HDF5 in the EMD 1.0 layout
written by :mod:`napari_4dstem_ml.simulate`; the 4D data stays lazy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import Calibration, Dataset4D
from .simulate.groundtruth import LABEL_REFERENCE, LOWPASS_REFERENCE

ENV_VAR = "NAPARI_4DSTEM_ML_SAMPLE_DIR"


@dataclass(frozen=True)
class SampleInfo:
    key: str
    display_name: str
    filename: str
    role: str


SAMPLES: dict[str, SampleInfo] = {
    "mos2": SampleInfo("mos2", "MoS2 monolayer (training, with ptychography label)",
                       "mos2_monolayer.h5", "training"),
    "prsco3": SampleInfo("prsco3", "PrScO3 thick cross-section (test)", "prsco3_thick.h5", "test"),
}


@dataclass
class SampleData:
    """A loaded sample. Images are 2D float arrays ``(y, x)``; ``label_origin_A`` is the
    position (y, x) in Å of label pixel (0, 0) relative to scan position (0, 0);
    ``ground_truth`` and ``adf`` are on the scan grid; ``vacancy_sites`` are (row, col) in
    scan pixels (MoS2) or ``None``."""

    key: str
    path: Path
    dataset: Dataset4D
    label: np.ndarray
    label_pixel_size_A: float
    label_origin_A: tuple[float, float]
    label_method: str
    ground_truth: np.ndarray
    adf: np.ndarray
    adf_inner_mrad: float
    adf_outer_mrad: float
    vacancy_sites: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    #: the ground truth blurred *before* sampling where the file stores it ("label": at the
    #: ptychographic label's resolution, "lowpass": 0.4 Å; ``simulate.groundtruth``): scores at those
    #: resolutions use these instead of blurring ``ground_truth`` (aliased at coarse steps)
    ground_truth_references: dict[str, np.ndarray] = field(default_factory=dict)


def _candidate_dirs() -> list[Path]:
    dirs = []
    env = os.environ.get(ENV_VAR)
    if env:
        dirs.append(Path(env))
    here = Path(__file__).resolve()
    dirs.append(here.parent / "sample_data")  # packaged in wheels
    dirs.append(here.parents[2] / "sample_data")  # repository (src layout)
    return dirs


def _info(key: str) -> SampleInfo:
    if key not in SAMPLES:
        raise KeyError(f"unknown sample {key!r}; known samples: {sorted(SAMPLES)}")
    return SAMPLES[key]


def sample_path(key: str) -> Path:
    """Path of the sample file for ``key`` ("mos2" or "prsco3").

    Looks in ``$NAPARI_4DSTEM_ML_SAMPLE_DIR``, then ``napari_4dstem_ml/sample_data/`` in the
    installed package, then the repository's ``sample_data/``."""
    info = _info(key)
    tried = []
    for d in _candidate_dirs():
        p = d / info.filename
        tried.append(str(p))
        if p.is_file():
            return p
    raise FileNotFoundError(
        f"sample {key!r} ({info.filename}) not found; looked in: {', '.join(tried)}. "
        f"Set {ENV_VAR} to a folder holding it, or regenerate it with "
        f"`pip install 'napari-4dstem-ml[sim]'` and "
        f"`python -m napari_4dstem_ml.simulate {key} -o sample_data/{info.filename}`.")


def _attrs_to_python(attrs) -> dict[str, Any]:
    out = {}
    for k, v in attrs.items():
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, np.ndarray):
            v = v.tolist()
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


def _lazy_dataset(path: Path, attrs: dict[str, Any]) -> Dataset4D:
    """Fallback reader: the ``/datacube/data`` array through dask, chunked by scan row."""
    import dask.array as da
    import h5py

    f = h5py.File(path, "r")
    d = f["datacube/data"]
    a = _attrs_to_python(d.attrs)
    cal = Calibration(scan_step=tuple(a["scan_step_A"]), scan_units="A",
                      detector_pixel=tuple(a["detector_pixel_mrad"]), detector_units="mrad",
                      energy_ev=a.get("energy_ev"), convergence_mrad=a.get("convergence_mrad"))
    data = da.from_array(d, chunks=(1, -1, -1, -1))
    return Dataset4D(data=data, calibration=cal, source=path, reader="samples-hdf5",
                     metadata=dict(attrs))


def _open_dataset(path: Path, attrs: dict[str, Any]) -> Dataset4D:
    try:
        from .io import load

        ds = load(path, dataset="datacube/data")
    except Exception:  # reader not ready or not understanding the layout: read it here
        return _lazy_dataset(path, attrs)
    cal = ds.calibration
    if cal.scan_step_A is None or cal.detector_pixel_mrad is None or cal.energy_ev is None:
        return _lazy_dataset(path, attrs)
    return ds


#: where a sample file keeps its ground truth blurred before sampling (written by the generators)
REFERENCE_DATASETS = {"label": LABEL_REFERENCE, "lowpass": LOWPASS_REFERENCE}


def load_sample(key: str) -> SampleData:
    """Load sample ``key``: the 4D data lazily, the label, ground truth and ADF images."""
    import h5py

    path = sample_path(key)
    with h5py.File(path, "r") as f:
        attrs = _attrs_to_python(f.attrs)
        li = f["label/image"]
        label = li[()].astype(np.float32)
        la = _attrs_to_python(li.attrs)
        gt = f["ground_truth/potential"][()].astype(np.float32)
        ai = f["adf/image"]
        adf = ai[()].astype(np.float32)
        aa = _attrs_to_python(ai.attrs)
        vac = f["vacancy/sites"][()] if "vacancy/sites" in f else None
        refs = {k: f[path][()].astype(np.float32) for k, path in REFERENCE_DATASETS.items()
                if path in f}
    return SampleData(
        key=key, path=path, dataset=_open_dataset(path, attrs), label=label,
        label_pixel_size_A=float(la["pixel_size_A"]),
        label_origin_A=(float(la["origin_A"][0]), float(la["origin_A"][1])),
        label_method=str(la["label_method"]), ground_truth=gt, adf=adf,
        adf_inner_mrad=float(aa["inner_mrad"]), adf_outer_mrad=float(aa["outer_mrad"]),
        vacancy_sites=None if vac is None else np.asarray(vac, float), attrs=attrs,
        ground_truth_references=refs)


__all__ = ["ENV_VAR", "SAMPLES", "SampleData", "SampleInfo", "load_sample", "sample_path"]
