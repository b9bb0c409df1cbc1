"""Dectris NeXus (NXmx) master files, e.g. of the ARINA 4D-STEM detector.

The detector writes a *master* file ``NAME_master.h5`` whose ``entry/data`` group holds external
links ``data_000001``, ``data_000002``, ... to ``/entry/data/data`` in data files
``NAME_data_000001.h5``, ... beside it: stacks of frames ``(n_i, ky, kx)``, usually compressed
with bitshuffle-LZ4 (HDF5 filter 32008, read through ``hdf5plugin``). The frames of all data files,
in link order, make the scan (frame ``i = iy * nx + ix``).

The master file does not state the scan shape. The microscope's STEM software may write a
companion file ``NAME.h5`` with a ``STEM Metadata`` group whose attributes give ``NumPixelsX``,
``NumPixelsY``, ``Pixel Size`` (nm), ``High Tension`` (V), ``Camera Length`` (m) and ``Rotation``
(degrees); it is read when present. Otherwise the scan shape must be given.

Data files are opened by this module itself, from the master's folder (never through HDF5's
link resolution, which would first look relative to the working directory); a link that leaves
that folder is refused unless ``allow_external=True``.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import ExternalDataError, ReaderError
from .hdf5_calibration import Found, read_value
from .units import length_to_A, positive

#: names of the data links in ``entry/data``
DATA_LINK = re.compile(r"data_\d+$")
_SUFFIX = re.compile(r"(_master|_data_\d+)$")


def data_links(f) -> list[tuple[str, str, str]]:
    """``(name, file, path)`` of the external data links of an NXmx master, in order; ``[]``
    for any other file."""
    import h5py

    grp = f.get("entry/data", getlink=False)
    if not isinstance(grp, h5py.Group):
        return []
    out = []
    for name in sorted(grp):
        link = grp.get(name, getlink=True)
        if DATA_LINK.match(name) and isinstance(link, h5py.ExternalLink):
            out.append((name, link.filename, link.path))
    return out


def in_folder(path: Path, target: Path) -> bool:
    """True when ``target`` (resolved) lies in the folder of ``path`` (resolved)."""
    try:
        return target.resolve().parent == Path(path).resolve().parent
    except OSError:
        return False


def link_target(path: Path, filename: str) -> Path:
    """Where an external link's ``filename`` points, relative to the linking file's folder."""
    p = Path(filename)
    return p if p.is_absolute() else Path(path).parent / p


def open_data_files(path: Path, links: list[tuple[str, str, str]],
                    allow_external: bool) -> tuple[list, list]:
    """Open every linked data file and dataset: ``(files, datasets)``. Refuses links leaving
    the master's folder (unless allowed), missing files and inconsistent frame shapes, each
    with a ``ReaderError`` naming the file."""
    import h5py

    from .filters import ensure_filters

    ensure_filters()
    files, dsets = [], []
    try:
        for name, filename, inner in links:
            target = link_target(path, filename)
            if not in_folder(path, target) and not allow_external:
                raise ExternalDataError(
                    f"{path}: entry/data/{name} links to {filename}, outside the master file's "
                    "folder; refused by default, as such a link can point at any file on this "
                    "machine; allow it with allow_external=True", path, [str(target)])
            if not target.is_file():
                raise ReaderError(f"{path}: entry/data/{name} links to {target}, which does not "
                                  "exist (the data files are written beside the master file)",
                                  path)
            try:
                fh = h5py.File(target, "r")
            except OSError as exc:
                raise ReaderError(f"{target}: not a readable HDF5 data file ({exc})", target) from exc
            files.append(fh)
            dset = fh.get(inner)
            if not isinstance(dset, h5py.Dataset) or dset.ndim != 3:
                raise ReaderError(f"{target}: no stack of frames at {inner} (expected a 3D "
                                  "dataset (frames, ky, kx))", target)
            if dsets and (dset.shape[1:] != dsets[0].shape[1:] or dset.dtype != dsets[0].dtype):
                raise ReaderError(
                    f"{target}: frames of {dset.shape[1]} x {dset.shape[2]} {dset.dtype} do not "
                    f"match the first data file's {dsets[0].shape[1]} x {dsets[0].shape[2]} "
                    f"{dsets[0].dtype}", target)
            dsets.append(dset)
    except BaseException:
        for fh in files:
            fh.close()
        raise
    return files, dsets


def companion(path: Path) -> Path | None:
    """The STEM software's metadata file ``NAME.h5`` beside ``NAME_master.h5`` or
    ``NAME_data_000001.h5``, if it exists."""
    stem = _SUFFIX.sub("", Path(path).stem)
    if stem == Path(path).stem:
        return None
    p = Path(path).with_name(stem + ".h5")
    return p if p.is_file() else None


def stem_metadata(path: Path) -> tuple[Found, tuple[int, int] | None, list[str]]:
    """Calibrations, scan shape and notes from the companion ``STEM Metadata`` of ``path``
    (a master or data file); nothing when there is none."""
    import h5py

    found, shape, notes = Found(), None, []
    other = companion(path)
    if other is None:
        return found, shape, notes
    try:
        with h5py.File(other, "r") as f:
            g = f.get("STEM Metadata")
            if not isinstance(g, h5py.Group):
                return found, shape, notes
            a = dict(g.attrs)
    except OSError:
        return found, shape, notes
    where = f"{other.name}: STEM Metadata"

    def num(key):
        return positive(read_value_attr(a, key))

    nx, ny = num("NumPixelsX"), num("NumPixelsY")
    if nx and ny and nx == int(nx) and ny == int(ny):
        shape = (int(ny), int(nx))
    step = num("Pixel Size")
    if step:
        a_step = length_to_A(step, "nm")
        found.put("scan_step", (a_step, a_step), f"{where} Pixel Size (nm)", scan_units="A")
        if read_value_attr(a, "IsPixelSizeCalibrated") == 0:
            notes.append(f"{other.name} marks its scan pixel size as not calibrated "
                         "(IsPixelSizeCalibrated 0): it is the STEM software's nominal value")
    hv = num("High Tension")
    if hv:
        found.put("energy_ev", hv, f"{where} High Tension (V)")
    cl = num("Camera Length")
    if cl:
        found.put("camera_length_m", cl, f"{where} Camera Length (m)")
    rot = read_value_attr(a, "Rotation")
    if rot is not None:
        found.put("scan_rotation_deg", float(rot), f"{where} Rotation (degrees)")
    return found, shape, notes


def read_value_attr(attrs: dict, key: str):
    """A scalar attribute (a one-element array is unwrapped), else ``None``."""
    import numpy as np

    v = attrs.get(key)
    if v is None:
        return None
    arr = np.asarray(v).ravel()
    if arr.size != 1:
        return None
    try:
        return float(arr[0])
    except (TypeError, ValueError):
        return None


__all__ = ["companion", "data_links", "in_folder", "link_target", "open_data_files",
           "read_value", "stem_metadata"]
