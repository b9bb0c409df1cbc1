"""Dispatch from a path to the reader that handles it.

Readers (``reader=`` names): ``"empad"`` (``.raw``, or the EMPAD ``.xml``), ``"hdf5"``
(``.h5``, ``.hdf5``, ``.emd``), ``"numpy"`` (``.npy``, ``.npz``), ``"rsciio"`` (``.mib``,
``.dm3``, ``.dm4``, ``.blo``, ``.hspy``, ``.zspy``; ``"rsciio:<plugin>"`` forces a RosettaSciIO
plugin, e.g. ``"rsciio:hspy"``).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from ..dataset import Dataset4D
from . import empad, hdf5, numpy_files, rsciio
from .errors import AmbiguousDatasetError, ReaderError, ScanShapeRequired

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
OPTIONS = ("dataset", "scan_shape", "key", "reader")


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
        return empad.NAME if empad.sniff_raw(path) else None
    if ext == ".xml":
        return empad.NAME if empad.sniff_xml(path) else None
    if ext == ".npy":
        return numpy_files.NAME if numpy_files.sniff_npy(path) else None
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
    without XML), ``reader=`` (force a reader by name). Raises :class:`ReaderError` (a
    ``ValueError``) naming the file and what was expected; :class:`AmbiguousDatasetError`
    (``.candidates``) when a choice is needed; :class:`ScanShapeRequired` (``.n_frames``) when
    the scan shape is unknown.
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(f"load() got unknown options {unknown}; known: {list(OPTIONS)}")
    path = Path(path)
    if not path.exists():
        raise ReaderError(f"{path}: no such file", path)
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
    return module.read(path, **extra, **opts)


__all__ = ["EXTENSIONS", "OPTIONS", "READERS", "AmbiguousDatasetError", "ReaderError",
           "ScanShapeRequired", "can_read", "list_datasets", "load", "reader_for"]
