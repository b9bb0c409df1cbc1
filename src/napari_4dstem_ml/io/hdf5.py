"""HDF5 reader (``.h5``, ``.hdf5``, ``.emd``): EMD 1.0 / py4DSTEM files and generic files.

The data come back as a Dask array over the h5py dataset, chunked in whole scan rows of about
64 MB (a multiple of the dataset's own chunking along the scan). The file is opened read-only
and stays open as long as the array lives (the array's graph holds it).

Which dataset: ``dataset=`` (a dataset path, or an EMD array group holding ``data``); else the
only 3D/4D dataset; else the only 4D ``data`` inside an EMD array group (``emd_group_type`` =
``"array"``, or ``1`` in older EMD), preferring a py4DSTEM ``DataCube``; else
:class:`~napari_4dstem_ml.io.errors.AmbiguousDatasetError` with ``candidates``. A 3D stack
``(N, ky, kx)`` needs a scan shape (``scan_shape=`` or a ``scan_shape`` attribute) and is viewed
as 4D lazily (frame ``i = iy * nx + ix``). HyperSpy files (root attribute
``file_format="HyperSpy"``) are handed to RosettaSciIO.

Calibrations, later sources overriding earlier ones:

1. EMD dim vectors ``dim0..dim3`` (or ``dim1..dim4``) beside ``data``: step = ``v[1] - v[0]``,
   unit from the ``units`` attribute (scan: ``A``, ``nm``, ...; detector: ``mrad``, ``A^-1``,
   ``1/nm``, ...; ``pixels`` means uncalibrated).
2. py4DSTEM calibration metadata: a group ``metadatabundle/calibration`` (py4DSTEM >= 0.14,
   emdfile) or ``_metadata/calibration`` (0.13) in the array group or any group above it, with
   ``R_pixel_size``, ``R_pixel_units``, ``Q_pixel_size``, ``Q_pixel_units``,
   ``convergence_semiangle_mrad`` (datasets or attributes).
3. Attributes on the file, then groups down to the dataset, then the dataset itself (nearest
   wins): ``scan_step_A`` (Å; scalar or ``(dy, dx)``), ``detector_pixel_mrad`` (mrad) or
   ``detector_pixel_inv_A`` (Å⁻¹; scalar or ``(dky, dkx)``), ``energy_ev`` (eV),
   ``convergence_mrad`` (mrad), ``camera_length_m`` (m), ``scan_shape`` (``(ny, nx)``, for 3D).

py4DSTEM's axis order ``(Rx, Ry, Qx, Qy)`` is array order, which is ours: no transpose.

Data in other files: a dataset reached through an external link, stored in external raw
files (``external=``) or assembled from other files (a virtual dataset) would make reading
this file read those files too. That is refused with an
:class:`~napari_4dstem_ml.io.errors.ExternalDataError` naming them, unless
``allow_external=True``; allowed, they are listed in ``metadata["input_files"]``.
"""

from __future__ import annotations

import math
import posixpath
from pathlib import Path
from typing import Any

import numpy as np

from ..dataset import Calibration, Dataset4D
from .errors import AmbiguousDatasetError, ExternalDataError, ReaderError
from .shapes import normalize_scan_shape, require_scan_shape, rows_per_chunk
from .units import as_text, detector_step, length_to_A, pair, positive

NAME = "hdf5"
EXTENSIONS = (".h5", ".hdf5", ".emd")
ATTRIBUTE_NAMES = ("scan_step_A", "detector_pixel_mrad", "detector_pixel_inv_A", "energy_ev",
                   "convergence_mrad", "camera_length_m", "scan_shape")
_EMD_ARRAY = ("array", 1)


def _open(path: Path):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise ReaderError(f"{path}: not a readable HDF5 file ({exc})", path) from exc


def _is_emd_array(group) -> bool:
    t = group.attrs.get("emd_group_type")
    if t is None:
        return False
    t = as_text(t) if isinstance(t, (bytes, str, np.bytes_)) else t
    try:
        return t in _EMD_ARRAY or int(t) == 1
    except (TypeError, ValueError):
        return False


def _candidates(f) -> list[str]:
    import h5py

    out: list[str] = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.ndim in (3, 4) and obj.size > 0:
            out.append("/" + name)

    f.visititems(visit)
    return out


def list_datasets(path: str | Path) -> list[str]:
    """Paths of the 3D/4D datasets in an HDF5 file (for the GUI to offer a choice)."""
    path = Path(path)
    with _open(path) as f:
        return _candidates(f)


def check_links(f, key: str, path: Path, allow_external: bool, depth: int = 0) -> None:
    """Refuse (unless allowed) an external link on the way to ``key``, before following it."""
    import h5py

    if depth > 16:
        raise ReaderError(f"{path}: too many soft links on the way to {key!r}", path)
    parts = [p for p in key.split("/") if p]
    here = "/"
    for part in parts:
        grp = f.get(here)
        if not isinstance(grp, h5py.Group):
            return
        link = grp.get(part, getlink=True)
        if isinstance(link, h5py.ExternalLink) and not allow_external:
            raise ExternalDataError(
                f"{path}: {posixpath.join(here, part)} is an external link to "
                f"{link.filename}:{link.path}; refused by default, as it can point at any file "
                "on this machine; allow it with allow_external=True", path, [link.filename])
        if isinstance(link, h5py.SoftLink):
            rest = "/".join(parts[parts.index(part) + 1:])
            target = link.path if link.path.startswith("/") else posixpath.join(here, link.path)
            check_links(f, posixpath.join(target, rest), path, allow_external, depth + 1)
            return
        here = posixpath.join(here, part)


def _pick(f, path: Path, dataset: str | None, allow_external: bool = False):
    import h5py

    if dataset is not None:
        key = dataset if str(dataset).startswith("/") else "/" + str(dataset)
        check_links(f, key, path, allow_external)
        obj = f.get(key)
        if isinstance(obj, h5py.Group) and isinstance(obj.get("data"), h5py.Dataset):
            obj = obj["data"]
        if not isinstance(obj, h5py.Dataset) or obj.ndim not in (3, 4):
            raise AmbiguousDatasetError(
                f"{path}: no 3D/4D dataset {dataset!r}; candidates: {_candidates(f)}",
                path, _candidates(f))
        return obj
    cands = _candidates(f)
    if not cands:
        raise ReaderError(f"{path}: no 3D or 4D dataset in the file (expected a 4D "
                          "(scan_y, scan_x, ky, kx) array or a 3D stack of patterns)", path)
    if len(cands) == 1:
        return f[cands[0]]
    emd = [c for c in cands if posixpath.basename(c) == "data" and f[c].ndim == 4
           and _is_emd_array(f[c].parent)]
    if len(emd) > 1:
        cubes = [c for c in emd if as_text(f[c].parent.attrs.get("python_class", "")) == "DataCube"]
        emd = cubes if len(cubes) == 1 else emd
    if len(emd) == 1:
        return f[emd[0]]
    raise AmbiguousDatasetError(
        f"{path}: several 3D/4D datasets and none chosen; pass dataset= one of {cands}",
        path, cands)


def other_files(dset, path: str | Path) -> list[tuple[str, str]]:
    """``(file, how)`` for every file other than ``path`` that reading ``dset`` reads: the
    file an external link led to, external raw storage, the sources of a virtual dataset."""
    import os

    here = os.path.realpath(path)
    out: list[tuple[str, str]] = []
    fname = dset.file.filename
    if os.path.realpath(fname) != here:
        out.append((fname, "external link"))
    for entry in dset.external or ():
        name = entry[0].decode() if isinstance(entry[0], bytes) else str(entry[0])
        out.append((name, "external storage"))
    if dset.is_virtual:
        for vs in dset.virtual_sources():
            if vs.file_name != "." and os.path.realpath(vs.file_name) != here:
                out.append((vs.file_name, "virtual dataset source"))
    return list(dict.fromkeys(out))


def require_local(dset, path: str | Path, allow_external: bool = False) -> list[str]:
    """The other files ``dset`` reads (see :func:`other_files`); an ``ExternalDataError``
    naming them unless ``allow_external``."""
    others = other_files(dset, path)
    if others and not allow_external:
        what = "; ".join(f"{how} -> {name}" for name, how in others[:5])
        raise ExternalDataError(
            f"{path}: dataset {dset.name} is read from other files ({what}); refused by "
            "default, as such a file can point at any file on this machine; allow it with "
            "allow_external=True", path, [n for n, _ in others])
    return [n for n, _ in others]


def _read_value(group, key: str) -> Any:
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


def _emd_dims(group, rank: int) -> dict:
    """Scan step and detector pixel from EMD dim vectors (4D arrays only)."""
    out: dict = {}
    if rank != 4:
        return out
    base = 0 if "dim0" in group else 1 if "dim1" in group else None
    if base is None:
        return out
    steps: list[tuple[float, Any] | None] = []
    for i in range(4):
        d = group.get(f"dim{i + base}")
        if d is None or getattr(d, "ndim", 0) != 1 or d.shape[0] < 2:
            steps.append(None)
            continue
        v = d[:2].astype(float)
        steps.append((abs(float(v[1] - v[0])), d.attrs.get("units", "")))
    if steps[0] and steps[1]:
        s = [length_to_A(*st) for st in steps[:2]]
        if all(x and x > 0 for x in s):
            out["scan_step"], out["scan_units"] = (s[0], s[1]), "A"
    if steps[2] and steps[3]:
        d = [detector_step(*st) for st in steps[2:]]
        if all(d) and d[0][1] == d[1][1] and d[0][0] > 0 and d[1][0] > 0:
            out["detector_pixel"], out["detector_units"] = (d[0][0], d[1][0]), d[0][1]
    return out


def _ancestors(obj) -> list:
    """The object's groups from the file root down to its parent."""
    chain = []
    g = obj.parent
    while True:
        chain.append(g)
        if g.name == "/":
            break
        g = g.parent
    return chain[::-1]


def _py4dstem_calibration(groups: list) -> dict:
    out: dict = {}
    for g in groups:  # root first, nearest last (wins)
        for bundle in ("metadatabundle", "_metadata"):
            cal = g.get(f"{bundle}/calibration")
            if cal is None:
                continue
            r, ru = _read_value(cal, "R_pixel_size"), _read_value(cal, "R_pixel_units")
            q, qu = _read_value(cal, "Q_pixel_size"), _read_value(cal, "Q_pixel_units")
            rp = pair(r) if r is not None else None
            if rp and ru is not None:
                s = [length_to_A(v, ru) for v in rp]
                if all(s):
                    out["scan_step"], out["scan_units"] = (s[0], s[1]), "A"
            qp = pair(q) if q is not None else None
            if qp and qu is not None:
                d = [detector_step(v, qu) for v in qp]
                if all(d):
                    out["detector_pixel"], out["detector_units"] = (d[0][0], d[1][0]), d[0][1]
            c = positive(_read_value(cal, "convergence_semiangle_mrad"))
            if c:
                out["convergence_mrad"] = c
    return out


def _attribute_calibration(objs: list) -> tuple[dict, tuple[int, int] | None]:
    out: dict = {}
    scan_shape = None
    for o in objs:  # root first, dataset last (wins)
        a = o.attrs
        if "scan_step_A" in a and pair(a["scan_step_A"]):
            out["scan_step"], out["scan_units"] = pair(a["scan_step_A"]), "A"
        if "detector_pixel_mrad" in a and pair(a["detector_pixel_mrad"]):
            out["detector_pixel"], out["detector_units"] = pair(a["detector_pixel_mrad"]), "mrad"
        if "detector_pixel_inv_A" in a and pair(a["detector_pixel_inv_A"]):
            out["detector_pixel"], out["detector_units"] = pair(a["detector_pixel_inv_A"]), "A^-1"
        for key, name in (("energy_ev", "energy_ev"), ("convergence_mrad", "convergence_mrad"),
                          ("camera_length_m", "camera_length_m")):
            if key in a and positive(a[key]):
                out[name] = positive(a[key])
        if "scan_shape" in a:
            try:
                scan_shape = normalize_scan_shape(a["scan_shape"])
            except ReaderError:
                pass
    return out, scan_shape


class _H5Source:
    """A 4D view ``(ny, nx, ky, kx)`` of an h5py dataset (4D, or a 3D stack of frames) for
    ``dask.array.from_array``; it holds the open file so that it stays open."""

    def __init__(self, file, dset, shape4: tuple[int, int, int, int]) -> None:
        self.file = file
        self.dset = dset
        self.shape = tuple(int(n) for n in shape4)
        self.dtype = dset.dtype
        self.ndim = 4

    def __getitem__(self, key):
        if self.dset.ndim == 4:
            return self.dset[key]
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (5 - len(key)) + key[i + 1:]
        key = key + (slice(None),) * (4 - len(key))
        ny, nx = self.shape[:2]
        squeeze = []
        sl = []
        for ax, k in enumerate(key[:2]):
            n = self.shape[ax]
            if isinstance(k, (int, np.integer)):
                k = int(k) + n if k < 0 else int(k)
                if not 0 <= k < n:
                    raise IndexError(f"index {k} out of range for axis {ax} of size {n}")
                sl.append(slice(k, k + 1, 1))
                squeeze.append(ax)
            elif isinstance(k, slice):
                sl.append(slice(*k.indices(n)))
            else:
                raise TypeError("only integers and slices index the scan axes")
        (y0, y1, ys), (x0, x1, xs) = ((s.start, s.stop, s.step) for s in sl)
        if ys < 0 or xs < 0:
            raise IndexError("negative steps are not supported on the scan axes")
        nrow = len(range(y0, y1, ys))
        ncol = len(range(x0, x1, xs))
        if nrow == 0 or ncol == 0:
            det = np.empty(self.shape[2:], np.uint8)[key[2], key[3]].shape
            out = np.empty((nrow, ncol, *det), self.dtype)
        else:
            lo, hi = y0, y0 + (nrow - 1) * ys + 1  # rows actually spanned
            frames = self.dset[lo * nx:hi * nx, key[2], key[3]]
            block = frames.reshape(hi - lo, nx, *frames.shape[1:])
            out = block[::ys, x0:x1:xs]
        return out.squeeze(axis=tuple(squeeze)) if squeeze else out


def read(path: str | Path, dataset: str | None = None, scan_shape=None,
         allow_external: bool = False, **_ignored) -> Dataset4D:
    """Open a 4D data set from an HDF5 file lazily (Dask over h5py)."""
    import dask.array as da
    from dask.base import tokenize

    path = Path(path)
    scan_shape = normalize_scan_shape(scan_shape, path)
    f = _open(path)
    try:
        if as_text(f.attrs.get("file_format", "")) == "HyperSpy":
            f.close()
            from . import rsciio as rs

            return rs.read(path, plugin="hspy", scan_shape=scan_shape, dataset=dataset)
        dset = _pick(f, path, dataset, allow_external)
        others = require_local(dset, path, allow_external)
        if not others and dset.size and dset.id.get_storage_size() == 0:
            raise ReaderError(f"{path}: dataset {dset.name} declares shape {tuple(dset.shape)} "
                              "but holds no stored data (nothing was ever written to it)", path)
        groups = _ancestors(dset)
        changes: dict = {}
        if _is_emd_array(dset.parent) and posixpath.basename(dset.name) == "data":
            changes.update(_emd_dims(dset.parent, dset.ndim))
        changes.update(_py4dstem_calibration(groups))
        attrs, attr_shape = _attribute_calibration([*groups, dset])
        changes.update(attrs)
        if dset.ndim == 3:
            n = dset.shape[0]
            ny, nx = require_scan_shape(n, scan_shape or attr_shape, path, "diffraction patterns")
            shape4 = (ny, nx, *dset.shape[1:])
            chunk_frames = dset.chunks[0] if dset.chunks else 1
            mult = chunk_frames // math.gcd(chunk_frames, nx)
        else:
            shape4 = tuple(dset.shape)
            if scan_shape is not None and tuple(scan_shape) != shape4[:2]:
                raise ReaderError(
                    f"{path}: dataset {dset.name} has scan shape {shape4[0]} x {shape4[1]}, "
                    f"not the requested {scan_shape[0]} x {scan_shape[1]}", path)
            mult = dset.chunks[0] if dset.chunks else 1
        ny, nx, ky, kx = shape4
        rows = rows_per_chunk(nx, ky, kx, dset.dtype.itemsize, mult, ny)
        src = _H5Source(f, dset, shape4)
        st = path.stat()
        name = "h5-" + tokenize(str(path.resolve()), st.st_mtime_ns, st.st_size, dset.name, shape4)
        data = da.from_array(src, chunks=(rows, nx, ky, kx), name=name, lock=True,
                             asarray=True, meta=np.empty((0, 0, 0, 0), dset.dtype))
        cal = Calibration(**changes)
    except BaseException:
        f.close()
        raise
    meta = {"dataset": dset.name, "original_shape": tuple(int(n) for n in dset.shape),
            "input_files": others}
    return Dataset4D(data, calibration=cal, source=path, reader=NAME, metadata=meta)
