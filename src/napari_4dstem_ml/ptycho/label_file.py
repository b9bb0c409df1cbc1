"""Writing a reconstructed label: HDF5 (``/label/image`` phase on the object grid with its
pixel size, origin, back end and parameters; ``/label/on_scan_grid``), or a 2D image file
(TIFF with the pixel size, ``.npy``, PNG preview) — always through
:func:`napari_4dstem_ml.export.output_file` (a temporary beside the target, put in place only
when complete). :func:`napari_4dstem_ml.registration.load_label` reads them back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..export import IMAGE_SUFFIXES, output_file, prepare_output, write_image, writing

HDF5_SUFFIXES = (".h5", ".hdf5")
LABEL_SUFFIXES = HDF5_SUFFIXES + IMAGE_SUFFIXES


def check_label_output(path: str | Path, *, overwrite: bool = False, inputs=()) -> Path:
    """Validate a label output path before any work (suffix, folder, not an input, exists)."""
    return prepare_output(path, overwrite=overwrite, inputs=inputs, suffixes=LABEL_SUFFIXES)


def write_label(path: str | Path, phase: np.ndarray, *, pixel_size_A: float,
                origin_A: tuple[float, float], on_scan_grid: np.ndarray, scan_step_A: float,
                method: str, attrs: dict[str, Any], overwrite: bool = False, inputs=()) -> Path:
    """Write ``phase`` (rad, ``(y, x)`` on the object grid) as a label file. ``attrs`` are
    JSON-serialisable facts (back end, version, config, geometry, quality, losses...)."""
    from ..export import check_image

    target = check_label_output(path, overwrite=overwrite, inputs=inputs)
    phase = check_image(phase, f"output {path}")
    meta = {"pixel_size_A": float(pixel_size_A), "origin_A": [float(v) for v in origin_A],
            "label_method": method, **attrs}
    if target.suffix.lower() not in HDF5_SUFFIXES:
        return write_image(path, phase, pixel_size_A, overwrite=overwrite, inputs=inputs,
                           metadata=meta)
    import h5py

    from .. import __version__

    with output_file(path, overwrite=overwrite, inputs=inputs) as tmp, writing(path), \
            h5py.File(tmp, "w") as f:
        f.attrs["label_method"] = method
        f.attrs["written_by"] = f"napari-4dstem-ml {__version__}"
        g = f.create_group("label")
        d = g.create_dataset("image", data=phase, compression="gzip", shuffle=True)
        d.attrs["pixel_size_A"] = float(pixel_size_A)
        d.attrs["origin_A"] = np.asarray(origin_A, float)
        d.attrs["units"] = "rad"
        d.attrs["label_method"] = method
        for k, v in attrs.items():
            d.attrs[k] = v if isinstance(v, (int, float, str)) else json.dumps(v, default=float)
        s = g.create_dataset("on_scan_grid", data=np.asarray(on_scan_grid, np.float32))
        s.attrs["pixel_size_A"] = float(scan_step_A)
        s.attrs["units"] = "rad"
        s.attrs["label_method"] = method + "; resampled at the scan positions (cubic spline)"
    return target
