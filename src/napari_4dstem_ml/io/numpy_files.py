"""NumPy reader: ``.npy`` and ``.npz``.

- ``.npy``: memory-mapped read-only (``mmap_mode="r"``); a 4D array ``(scan_y, scan_x, ky, kx)``
  or a 3D stack ``(N, ky, kx)`` with ``scan_shape=(ny, nx)`` (viewed as 4D, no copy).
- ``.npz``: the member is picked with ``key=`` (the name without ``.npy``), else the only 4D
  member, else the only 3D member (needs ``scan_shape``); otherwise an
  :class:`~napari_4dstem_ml.io.errors.AmbiguousDatasetError` (``option == "key"``). Members
  stored uncompressed (``np.savez``) are memory-mapped at their offset inside the zip file
  (lazy); compressed members (``np.savez_compressed``) cannot be and are loaded into memory
  whole. Small members named ``scan_step_A``, ``detector_pixel_mrad``, ``detector_pixel_inv_A``,
  ``energy_ev``, ``convergence_mrad``, ``camera_length_m``, ``scan_shape`` are read as
  calibrations (same names and units as the HDF5 attributes).
"""

from __future__ import annotations

import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..dataset import Calibration, Dataset4D
from .errors import AmbiguousDatasetError, ReaderError
from .shapes import normalize_scan_shape, stack_to_4d
from .units import pair, positive

NAME = "numpy"
EXTENSIONS = (".npy", ".npz")
_NPY_MAGIC = b"\x93NUMPY"
_CAL_KEYS = ("scan_step_A", "detector_pixel_mrad", "detector_pixel_inv_A", "energy_ev",
             "convergence_mrad", "camera_length_m", "scan_shape")


def sniff_npy(path: Path, ndims: tuple[int, ...] | None = None) -> bool:
    """The file starts with the ``.npy`` magic string (and, with ``ndims``, its header
    declares an array of one of those dimensionalities). Reads at most a few kB."""
    try:
        with open(path, "rb") as f:
            if f.read(6) != _NPY_MAGIC:
                return False
            if ndims is None:
                return True
            f.seek(0)
            shape = _read_header(f)[0]
    except (OSError, ValueError, EOFError, SyntaxError):
        return ndims is None
    return len(shape) in ndims


def sniff_npz(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def _read_header(fh) -> tuple[tuple[int, ...], bool, np.dtype]:
    fmt = np.lib.format
    version = fmt.read_magic(fh)
    if version == (1, 0):
        return fmt.read_array_header_1_0(fh)
    if version == (2, 0):
        return fmt.read_array_header_2_0(fh)
    return fmt._read_array_header(fh, version)  # version 3.0 (utf-8 field names)


@dataclass(frozen=True)
class NpzMember:
    """One array in an ``.npz``: where it is and whether it can be memory-mapped."""

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    offset: int | None  # byte offset of the array data in the .npz when stored uncompressed
    stored_bytes: int = 0  # bytes of array data the archive holds for it (uncompressed size)


def npz_members(path: str | Path) -> list[NpzMember]:
    """The arrays of an ``.npz`` with their shapes, reading only headers."""
    path = Path(path)
    out = []
    try:
        with zipfile.ZipFile(path) as z, open(path, "rb") as raw:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                key = info.filename[:-4]
                with z.open(info) as m:
                    shape, fortran, dtype = _read_header(m)
                    header_len = m.tell()
                offset = None
                if info.compress_type == zipfile.ZIP_STORED and not dtype.hasobject:
                    raw.seek(info.header_offset)
                    local = raw.read(30)
                    if local[:4] == b"PK\x03\x04":
                        n, k = struct.unpack("<HH", local[26:30])
                        offset = info.header_offset + 30 + n + k + header_len
                stored = max(0, info.file_size - header_len)
                out.append(NpzMember(key, tuple(shape), dtype, bool(fortran), offset, stored))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, SyntaxError, KeyError) as exc:
        raise ReaderError(f"{path}: not a readable .npz archive ({exc})", path) from exc
    return out


def list_arrays(path: str | Path) -> list[str]:
    """Keys of the 3D/4D arrays in an ``.npz`` (or ``[]`` for ``.npy``)."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        return []
    return [m.key for m in npz_members(path) if len(m.shape) in (3, 4)]


#: compressed ``.npz`` members are read whole into memory: at most this many bytes
MAX_COMPRESSED_MEMBER_BYTES = 4 * 2**30


def _member_array(path: Path, m: NpzMember) -> np.ndarray:
    if m.dtype.hasobject:
        raise ReaderError(f"{path}: member {m.key!r} holds Python objects (pickled data); such "
                          "arrays are never loaded, as loading them could run code", path)
    need = int(np.prod(m.shape, dtype=object)) * m.dtype.itemsize
    if need > m.stored_bytes:
        raise ReaderError(f"{path}: member {m.key!r} declares shape {m.shape} {m.dtype} "
                          f"({need} bytes) but holds {m.stored_bytes} bytes (truncated or "
                          "corrupt)", path)
    if m.offset is None and need > MAX_COMPRESSED_MEMBER_BYTES:
        raise ReaderError(f"{path}: member {m.key!r} is compressed ({need / 2**30:.1f} GiB once "
                          "read) and cannot be memory-mapped; save it with np.savez "
                          "(uncompressed) to read it lazily", path)
    if m.offset is not None:
        if int(np.prod(m.shape)) == 0:
            return np.empty(m.shape, m.dtype)
        return np.memmap(path, dtype=m.dtype, mode="r", offset=m.offset, shape=m.shape,
                         order="F" if m.fortran else "C")
    with np.load(path, allow_pickle=False) as z:
        return z[m.key]


def npy_header(path: Path) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """``(shape, fortran_order, dtype, data_offset)`` of a ``.npy`` file, checked against the
    file: the magic string, a parsable header, no Python objects, and enough bytes for the
    array the header declares. A ``ReaderError`` naming the file otherwise."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if f.read(6) != _NPY_MAGIC:
                raise ReaderError(f"{path}: not a NumPy .npy file (it does not start with the "
                                  ".npy signature)", path)
            f.seek(0)
            shape, fortran, dtype = _read_header(f)
            offset = f.tell()
    except ReaderError:
        raise
    except (OSError, ValueError, EOFError, SyntaxError) as exc:
        raise ReaderError(f"{path}: not a readable .npy array (broken header: {exc})", path) from exc
    if dtype.hasobject:
        raise ReaderError(f"{path}: the array holds Python objects (pickled data); such files "
                          "are never loaded, as loading them could run code", path)
    need = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if need > size - offset:
        raise ReaderError(
            f"{path}: the header declares shape {tuple(shape)} {dtype} ({need} bytes) but the "
            f"file holds {max(0, size - offset)} bytes of data (truncated?)", path)
    return tuple(shape), bool(fortran), dtype, offset


def _read_npy(path: Path, scan_shape) -> Dataset4D:
    npy_header(path)
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ReaderError(f"{path}: not a readable .npy array ({exc})", path) from exc
    data = stack_to_4d(arr, scan_shape, path)
    return Dataset4D(data, source=path, reader=NAME, metadata={})


def _read_npz(path: Path, key: str | None, scan_shape) -> Dataset4D:
    members = npz_members(path)
    by_key = {m.key: m for m in members}
    cands = [m.key for m in members if len(m.shape) in (3, 4)]
    if key is not None:
        if key not in by_key or len(by_key[key].shape) not in (3, 4):
            raise AmbiguousDatasetError(
                f"{path}: no 3D/4D array {key!r}; candidates: {cands}", path, cands, "key")
        chosen = by_key[key]
    else:
        four = [m for m in members if len(m.shape) == 4]
        three = [m for m in members if len(m.shape) == 3]
        if len(four) == 1:
            chosen = four[0]
        elif not four and len(three) == 1:
            chosen = three[0]
        elif not cands:
            shapes = {m.key: m.shape for m in members}
            raise ReaderError(
                f"{path}: no 4D (scan_y, scan_x, ky, kx) or 3D (N, ky, kx) array; found {shapes}",
                path)
        else:
            raise AmbiguousDatasetError(
                f"{path}: several 3D/4D arrays and none chosen; pass key= one of {cands}",
                path, cands, "key")
    small = {}
    for k in _CAL_KEYS:
        m = by_key.get(k)
        if m is not None and int(np.prod(m.shape)) <= 4 and not m.dtype.hasobject:
            small[k] = np.asarray(_member_array(path, m))
    if scan_shape is None and "scan_shape" in small:
        scan_shape = normalize_scan_shape(small["scan_shape"], path)
    changes: dict = {}
    if "scan_step_A" in small and pair(small["scan_step_A"]):
        changes.update(scan_step=pair(small["scan_step_A"]), scan_units="A")
    if "detector_pixel_mrad" in small and pair(small["detector_pixel_mrad"]):
        changes.update(detector_pixel=pair(small["detector_pixel_mrad"]), detector_units="mrad")
    elif "detector_pixel_inv_A" in small and pair(small["detector_pixel_inv_A"]):
        changes.update(detector_pixel=pair(small["detector_pixel_inv_A"]), detector_units="A^-1")
    for k in ("energy_ev", "convergence_mrad", "camera_length_m"):
        if k in small and positive(small[k]):
            changes[k] = positive(small[k])
    data = stack_to_4d(_member_array(path, chosen), scan_shape, path)
    meta = {"key": chosen.key, "memory_mapped": chosen.offset is not None}
    return Dataset4D(data, calibration=Calibration(**changes), source=path, reader=NAME,
                     metadata=meta)


def read(path: str | Path, key: str | None = None, scan_shape=None, dataset: str | None = None,
         **_ignored) -> Dataset4D:
    """Open a ``.npy`` (memory-mapped) or ``.npz`` as a 4D data set (``dataset`` = ``key``)."""
    path = Path(path)
    scan_shape = normalize_scan_shape(scan_shape, path)
    if path.suffix.lower() == ".npz":
        return _read_npz(path, key if key is not None else dataset, scan_shape)
    return _read_npy(path, scan_shape)
