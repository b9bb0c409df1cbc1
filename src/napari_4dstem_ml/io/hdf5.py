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

Calibrations: everything the file states, with the field each came from (EMD dim vectors,
Prismatic parameters, py4DSTEM metadata, TIA tags, NeXus, this project's attributes
``scan_step_A``, ``detector_pixel_mrad``/``detector_pixel_inv_A``, ``energy_ev``,
``convergence_mrad``, ``camera_length_m`` and ``scan_shape`` for 3D stacks): see
:mod:`.hdf5_calibration`. Dectris NeXus master files are assembled from their data files
(:mod:`.nexus`).

py4DSTEM's axis order ``(Rx, Ry, Qx, Qy)`` is array order, which is ours: no transpose.

Data in other files: an external link, external raw storage or a virtual dataset makes reading
this file read other files too. Links and virtual-dataset sources that resolve inside this
file's own folder are followed (that is how detectors write a master file beside its data
files); anything else is refused with an :class:`~napari_4dstem_ml.io.errors.ExternalDataError`
naming the files, unless ``allow_external=True``. A virtual dataset whose source file is missing
is refused either way (HDF5 would read its part as fill values). The files read are listed in
``metadata["input_files"]``. Compressed data (bitshuffle-LZ4, LZ4, Blosc, Zstd, ... as detectors
write them) are read through ``hdf5plugin``, imported before the first read.
"""

from __future__ import annotations

import math
import posixpath
from pathlib import Path

import numpy as np

from ..dataset import Calibration, Dataset4D
from . import nexus
from .errors import AmbiguousDatasetError, ExternalDataError, ReaderError
from .filters import ensure_filters
from .hdf5_calibration import calibration_of, is_emd_array
from .shapes import normalize_scan_shape, require_scan_shape, rows_per_chunk
from .units import as_text

NAME = "hdf5"
EXTENSIONS = (".h5", ".hdf5", ".emd")
ATTRIBUTE_NAMES = ("scan_step_A", "detector_pixel_mrad", "detector_pixel_inv_A", "energy_ev",
                   "convergence_mrad", "camera_length_m", "scan_shape")
def _open(path: Path):
    import h5py

    ensure_filters()
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise ReaderError(f"{path}: not a readable HDF5 file ({exc})", path) from exc


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
        if (isinstance(link, h5py.ExternalLink) and not allow_external
                and not nexus.in_folder(path, nexus.link_target(path, link.filename))):
            raise ExternalDataError(
                f"{path}: {posixpath.join(here, part)} is an external link to "
                f"{link.filename}:{link.path} outside the file's folder; refused by default, as "
                "it can point at any file on this machine; allow it with allow_external=True",
                path, [link.filename])
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
           and is_emd_array(f[c].parent)]
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
        base = Path(dset.file.filename).parent
        for vs in dset.virtual_sources():
            if vs.file_name != "." and os.path.realpath(base / vs.file_name) != here:
                out.append((str(nexus.link_target(Path(dset.file.filename), vs.file_name)),
                            "virtual dataset source"))
    return list(dict.fromkeys(out))


def require_local(dset, path: str | Path, allow_external: bool = False) -> list[str]:
    """The other files ``dset`` reads (see :func:`other_files`). Those outside ``path``'s
    folder are an ``ExternalDataError`` unless ``allow_external``; external raw storage is
    always treated as outside; a missing virtual-dataset source is a ``ReaderError``."""
    path = Path(path)
    others = other_files(dset, path)
    missing = [n for n, how in others if how == "virtual dataset source" and not Path(n).is_file()]
    if missing:
        raise ReaderError(
            f"{path}: dataset {dset.name} is assembled from other files and "
            f"{len(missing)} of them do not exist ({'; '.join(missing[:3])}); HDF5 would read "
            "those parts as zeros", path)
    outside = [(n, how) for n, how in others
               if how == "external storage" or not nexus.in_folder(path, Path(n))]
    if outside and not allow_external:
        what = "; ".join(f"{how} -> {name}" for name, how in outside[:5])
        raise ExternalDataError(
            f"{path}: dataset {dset.name} is read from files outside its folder ({what}); "
            "refused by default, as such a file can point at any file on this machine; allow it "
            "with allow_external=True", path, [n for n, _ in outside])
    return [n for n, _ in others]


class _H5Source:
    """A 4D view ``(ny, nx, ky, kx)`` of h5py datasets for ``dask.array.from_array``: one 4D
    dataset, or 3D stacks of frames (one, or several in a row, as the data files of a NeXus
    master) taken as one stack, frame ``i = iy * nx + ix``. It holds the open files so that
    they stay open."""

    def __init__(self, files: list, dsets: list, shape4: tuple[int, int, int, int]) -> None:
        self.files = files
        self.dsets = dsets
        self.shape = tuple(int(n) for n in shape4)
        self.dtype = dsets[0].dtype
        self.ndim = 4
        self.starts = np.cumsum([0] + [d.shape[0] for d in dsets]) if dsets[0].ndim == 3 else None

    def _frames(self, lo: int, hi: int, k2, k3) -> np.ndarray:
        """Frames ``lo:hi`` of the stack, across the datasets they lie in."""
        parts = []
        for d, s0, s1 in zip(self.dsets, self.starts[:-1], self.starts[1:]):
            a, b = max(lo, s0), min(hi, s1)
            if a < b:
                parts.append(d[a - s0:b - s0, k2, k3])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def __getitem__(self, key):
        if self.starts is None:
            return self.dsets[0][key]
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
            frames = self._frames(lo * nx, hi * nx, key[2], key[3])
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
    files = [f]
    try:
        if as_text(f.attrs.get("file_format", "")) == "HyperSpy":
            f.close()
            from . import rsciio as rs

            return rs.read(path, plugin="hspy", scan_shape=scan_shape, dataset=dataset)
        links = nexus.data_links(f) if dataset is None else []
        notes: list[str] = []
        if links:  # a NeXus master: the frames of its data files, in link order
            data_files, dsets = nexus.open_data_files(path, links, allow_external)
            files += data_files
            others = [fh.filename for fh in data_files]
            found, attr_shape = calibration_of(f, dsets[0])
            name_of = "/entry/data"
        else:
            dset = _pick(f, path, dataset, allow_external)
            others = require_local(dset, path, allow_external)
            if not others and dset.size and dset.id.get_storage_size() == 0:
                raise ReaderError(f"{path}: dataset {dset.name} declares shape "
                                  f"{tuple(dset.shape)} but holds no stored data (nothing was "
                                  "ever written to it)", path)
            dsets = [dset]
            found, attr_shape = calibration_of(f, dset)
            name_of = dset.name
        shape_from = "the dataset's shape"
        if dsets[0].ndim == 3:
            n = sum(d.shape[0] for d in dsets)
            companion, companion_shape, notes = nexus.stem_metadata(path)
            found.update(companion)
            if companion.changes or companion_shape:
                others.append(str(nexus.companion(path)))
            if scan_shape is not None:
                shape_from = "scan_shape option"
            elif attr_shape is not None:
                shape_from = "scan_shape attribute"
            elif companion_shape is not None:
                shape_from = f"{nexus.companion(path).name}: STEM Metadata NumPixelsY, NumPixelsX"
            ny, nx = require_scan_shape(n, scan_shape or attr_shape or companion_shape, path,
                                        "diffraction patterns")
            shape4 = (ny, nx, *dsets[0].shape[1:])
            chunk_frames = dsets[0].chunks[0] if dsets[0].chunks else 1
            mult = chunk_frames // math.gcd(chunk_frames, nx)
        else:
            shape4 = tuple(dsets[0].shape)
            if scan_shape is not None and tuple(scan_shape) != shape4[:2]:
                raise ReaderError(
                    f"{path}: dataset {name_of} has scan shape {shape4[0]} x {shape4[1]}, "
                    f"not the requested {scan_shape[0]} x {scan_shape[1]}", path)
            mult = dsets[0].chunks[0] if dsets[0].chunks else 1
        ny, nx, ky, kx = shape4
        dtype = dsets[0].dtype
        rows = rows_per_chunk(nx, ky, kx, dtype.itemsize, mult, ny)
        src = _H5Source(files, dsets, shape4)
        st = path.stat()
        name = "h5-" + tokenize(str(path.resolve()), st.st_mtime_ns, st.st_size, name_of, shape4)
        data = da.from_array(src, chunks=(rows, nx, ky, kx), name=name, lock=True,
                             asarray=True, meta=np.empty((0, 0, 0, 0), dtype))
        cal = Calibration(**found.changes, sources=found.sources)
    except BaseException:
        for fh in files:
            fh.close()
        raise
    meta = {"dataset": name_of if links else dsets[0].name,
            "original_shape": tuple(int(n) for n in (sum(d.shape[0] for d in dsets),
                                                     *dsets[0].shape[1:])) if links
            else tuple(int(n) for n in dsets[0].shape),
            "input_files": others, "scan_shape_from": shape_from, "notes": notes}
    return Dataset4D(data, calibration=cal, source=path, reader=NAME, metadata=meta)
