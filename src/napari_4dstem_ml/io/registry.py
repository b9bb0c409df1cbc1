"""Dispatch from a path to the reader that handles it.

Readers (``reader=`` names): ``"empad"`` (``.raw``, or the EMPAD ``.xml``), ``"hdf5"``
(``.h5``, ``.hdf5``, ``.emd``), ``"numpy"`` (``.npy``, ``.npz``), ``"rsciio"`` (``.mib``,
``.dm3``, ``.dm4``, ``.blo``, ``.hspy``, ``.zspy``; ``"rsciio:<plugin>"`` forces a RosettaSciIO
plugin, e.g. ``"rsciio:hspy"``).
"""

from __future__ import annotations

import stat
import struct
import zipfile
import zlib
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import numpy as np

from ..dataset import Dataset4D
from . import empad, hdf5, numpy_files, rsciio
from .errors import AmbiguousDatasetError, ExternalDataError, ReaderError, ScanShapeRequired

READERS: dict[str, ModuleType] = {
    empad.NAME: empad,
    hdf5.NAME: hdf5,
    numpy_files.NAME: numpy_files,
    rsciio.NAME: rsciio,
}
_ALIASES = {"raw": "empad", "h5": "hdf5", "emd": "hdf5", "npy": "numpy", "npz": "numpy"}
#: every extension some reader handles (lower case, with the dot)
EXTENSIONS: tuple[str, ...] = (*empad.EXTENSIONS, ".xml", *hdf5.EXTENSIONS,
                               *numpy_files.EXTENSIONS, *rsciio.EXTENSIONS)
OPTIONS = ("dataset", "scan_shape", "key", "reader", "allow_external")
#: dtypes read as they are; ``float16`` and ``bool`` are converted (to float32 / uint8)
#: lazily; anything else (complex, strings, objects, records, dates) is refused
CONVERTED = {np.dtype(np.float16): np.dtype(np.float32), np.dtype(bool): np.dtype(np.uint8)}
#: failures of parsing libraries on broken files, reported as a ReaderError naming the file
_PARSE_ERRORS = (OSError, KeyError, IndexError, RuntimeError, EOFError, struct.error,
                 UnicodeDecodeError, zipfile.BadZipFile, zlib.error, MemoryError, OverflowError)


def reader_for(path: str | Path) -> str | None:
    """Name of the reader for ``path`` from its extension (plus a header sniff for ``.raw``,
    ``.xml``, ``.npy``, ``.npz``), or ``None``. Cheap: reads at most a few kB."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext == ".zspy":  # a zarr store may be a folder
        return rsciio.NAME if path.exists() else None
    if not path.is_file():
        return None
    if ext == ".raw":
        ours = (empad.sniff_raw(path) or path.with_suffix(".xml").is_file()
                or empad.scan_shape_from_name(path) is not None)
        return empad.NAME if ours else None  # then a broken one gets a clear error
    if ext == ".xml":
        return empad.NAME if empad.sniff_xml(path) else None
    if ext == ".npy":
        return numpy_files.NAME if numpy_files.sniff_npy(path, ndims=(3, 4)) else None
    if ext == ".npz":
        return numpy_files.NAME if numpy_files.sniff_npz(path) else None
    if ext in hdf5.EXTENSIONS:
        return hdf5.NAME
    if ext in rsciio.EXTENSIONS:
        return rsciio.NAME
    return None


def can_read(path: str | Path) -> bool:
    """True when some reader here handles ``path`` (extension and a quick sniff; no parsing)."""
    try:
        return reader_for(path) is not None
    except (OSError, ValueError, TypeError):
        return False


def list_datasets(path: str | Path) -> list[str]:
    """The 3D/4D arrays a file offers: HDF5 dataset paths, or ``.npz`` keys; ``[]`` otherwise."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext in hdf5.EXTENSIONS:
        return hdf5.list_datasets(path)
    if ext == ".npz":
        return numpy_files.list_arrays(path)
    return []


def _resolve_reader(name: str, path: Path) -> tuple[ModuleType, dict]:
    name = str(name).strip().lower()
    extra: dict = {}
    if name.startswith("rsciio:"):
        name, extra["plugin"] = "rsciio", name.split(":", 1)[1]
    name = _ALIASES.get(name, name)
    if name not in READERS:
        raise ReaderError(f"{path}: unknown reader {name!r}; known readers: {sorted(READERS)}", path)
    return READERS[name], extra


def load(path: str | Path, **options) -> Dataset4D:
    """Open a 4D-STEM file lazily as a :class:`Dataset4D` ``(scan_y, scan_x, ky, kx)``.

    Options: ``dataset=`` (HDF5 internal path, or signal title/index for RosettaSciIO),
    ``key=`` (``.npz`` member), ``scan_shape=(ny, nx)`` (for stacks of frames, or an EMPAD file
    without XML), ``reader=`` (force a reader by name), ``allow_external=`` (HDF5: allow data
    stored in other files, see :mod:`.hdf5`). Raises :class:`ReaderError` (a ``ValueError``)
    naming the file and what was expected; :class:`AmbiguousDatasetError` (``.candidates``)
    when a choice is needed; :class:`ScanShapeRequired` (``.n_frames``) when the scan shape is
    unknown; :class:`ExternalDataError` for data in other files. Only regular files (and
    ``.zspy`` folders) are opened: FIFOs, devices and sockets are refused before any read.
    The data's dtype must be real numbers: ``float16`` and ``bool`` are converted lazily
    (``metadata["converted_from"]``), complex, string, object and record dtypes are refused.
    An empty data set is refused.
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(f"load() got unknown options {unknown}; known: {list(OPTIONS)}")
    path = Path(path)
    check_regular_file(path, folders=(".zspy",))
    forced = options.pop("reader", None)
    opts = {k: v for k, v in options.items() if v is not None}
    if forced:
        module, extra = _resolve_reader(forced, path)
    else:
        # dispatch on the extension; the reader itself explains what is wrong with a file
        ext = path.suffix.lower()
        name = next((m.NAME for m in READERS.values() if ext in m.EXTENSIONS), None)
        if ext == ".xml":
            name = empad.NAME
        if name is None:
            raise ReaderError(
                f"{path}: no reader for '{path.suffix}' files; readable: {', '.join(EXTENSIONS)}",
                path)
        module, extra = READERS[name], {}
    if module is not hdf5:
        opts.pop("allow_external", None)
    try:
        ds = module.read(path, **extra, **opts)
    except ReaderError:
        raise
    except _PARSE_ERRORS as exc:
        raise ReaderError(f"{path}: cannot read it ({_reason(exc)})", path) from exc
    except ValueError as exc:  # e.g. a shape that is not 4D-STEM data
        raise ReaderError(f"{path}: {exc}", path) from exc
    return check_dtype(ds, path)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, MemoryError):
        return "it claims more memory than is available"
    text = (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def check_regular_file(path: str | Path, folders: tuple[str, ...] = ()) -> None:
    """A ``ReaderError`` unless ``path`` is a regular file (or a folder with one of the
    extensions ``folders``): no FIFOs, devices or sockets, which could block or never end."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ReaderError(f"{path}: no such file", path) from None
    except OSError as exc:
        raise ReaderError(f"{path}: cannot open it ({exc.strerror or exc})", path) from exc
    if stat.S_ISDIR(mode):
        if path.suffix.lower() in folders:
            return
        raise ReaderError(f"{path} is a folder, not a data file", path)
    if not stat.S_ISREG(mode):
        raise ReaderError(f"{path} is not a regular file (a FIFO, device or socket); "
                          "refusing to read from it", path)


def check_dtype(ds: Dataset4D, path: str | Path) -> Dataset4D:
    """``ds`` with a dtype the engine handles: real integers and float32/64 as they are,
    ``float16``/``bool`` converted lazily; anything else is a ``ReaderError`` naming the file.
    An empty data set is refused too."""
    dt = ds.dtype
    if 0 in ds.shape:
        raise ReaderError(f"{path}: the data set is empty (shape {ds.shape})", path)
    if dt in CONVERTED or (dt.kind == "f" and dt.newbyteorder("=") in CONVERTED):
        import dask.array as da

        target = CONVERTED[dt.newbyteorder("=")]
        data = ds.data if type(ds.data).__module__.startswith("dask") else da.from_array(
            ds.data, chunks=(max(1, 2**26 // max(1, int(np.prod(ds.shape[1:])) * 4)), -1, -1, -1))
        meta = {**ds.metadata, "converted_from": str(dt)}
        return replace(ds, data=data.astype(target), metadata=meta)
    if dt.kind in "iu" or (dt.kind == "f" and dt.itemsize in (4, 8)):
        return ds
    what = {"c": "complex numbers", "U": "text", "S": "bytes", "O": "Python objects",
            "V": "records (structured)", "M": "dates", "m": "time spans"}.get(dt.kind, str(dt))
    raise ReaderError(f"{path}: the data are {what} (dtype {dt}); expected real numbers "
                      "(integers or floats) per detector pixel", path)


__all__ = ["EXTENSIONS", "OPTIONS", "READERS", "AmbiguousDatasetError", "ExternalDataError",
           "ReaderError", "ScanShapeRequired", "can_read", "check_dtype", "check_regular_file",
           "list_datasets", "load", "reader_for"]
