"""What a worker needs to open a data set itself: :class:`DataSpec` (picklable, a few bytes).

On a worker :meth:`DataSpec.open` returns an array-like ``(Ny, Nx, ky, kx)`` that reads only
what is sliced from it: EMPAD ``.raw`` and ``.npy`` files as read-only memory maps at their byte
offsets, HDF5 datasets as h5py datasets (the engine maps uncompressed chunks directly and lets
h5py decompress the others, chunk by chunk), Zarr/Dask-backed data as the Dask array itself
(computed synchronously inside the task). Opened files are kept per worker process.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..dataset import Dataset4D


@dataclass(frozen=True)
class DataSpec:
    """``kind``: ``"empad"``, ``"npy"`` (memmap at ``offset``), ``"hdf5"`` (``name`` inside
    ``path``), ``"dask"`` (``array``: a Dask array whose graph reads the file, e.g. Zarr).
    ``shape`` is the 4D ``(Ny, Nx, ky, kx)``; ``mtime_ns`` guards against a changed file."""

    kind: str
    path: str
    shape: tuple[int, int, int, int]
    dtype: str
    offset: int = 0
    name: str = ""
    mtime_ns: int = 0
    array: Any = None

    @classmethod
    def from_dataset(cls, ds: Dataset4D) -> DataSpec:
        """The spec of a file-backed data set; ``ValueError`` for data that exist only in this
        process (they would have to be sent to the workers: run in process instead)."""
        shape = tuple(int(n) for n in ds.shape)
        data = ds.data
        mm = _memmap_root(data)
        if mm is not None and ds.reader in ("empad", "numpy"):
            path = str(Path(mm.filename))
            kind = "empad" if ds.reader == "empad" else "npy"
            return cls(kind, path, shape, np.dtype(ds.dtype).str, int(mm.offset), "",
                       Path(path).stat().st_mtime_ns)
        if ds.reader == "hdf5" and ds.source is not None:
            name = str(ds.metadata.get("dataset", ""))
            orig = tuple(ds.metadata.get("original_shape", shape))
            if name and len(orig) == 4:
                return cls("hdf5", str(ds.source), shape, np.dtype(ds.dtype).str, 0, name,
                           Path(ds.source).stat().st_mtime_ns)
        if type(data).__module__.startswith("dask") and not _holds_open_file(data):
            return cls("dask", str(ds.source or ""), shape, np.dtype(ds.dtype).str, array=data)
        raise ValueError(
            f"{ds.source or 'this data set'}: the {ds.reader} reader's data cannot be opened "
            "by Dask workers (EMPAD, .npy, 4D HDF5 and Zarr files can); run it in process")

    def open(self) -> Any:
        """The array-like ``(Ny, Nx, ky, kx)`` on this (worker) process."""
        if self.kind == "dask":
            return _SyncDask(self.array)
        return _open_cached(self)


def _memmap_root(a: Any) -> np.memmap | None:
    """The ``np.memmap`` a (sliced) array views, or ``None``."""
    while a is not None:
        if isinstance(a, np.memmap) and a.base is not None and not isinstance(a.base, np.ndarray):
            return a
        a = getattr(a, "base", None)
        if a is not None and not isinstance(a, np.ndarray):
            return None
    return None


def _holds_open_file(arr: Any) -> bool:
    """Whether a Dask array's graph holds an open h5py object (not picklable)."""
    try:
        graph = arr.__dask_graph__()
        for layer in getattr(graph, "layers", {}).values():
            for v in getattr(layer, "mapping", {}).values() if hasattr(layer, "mapping") else ():
                if "h5py" in type(v).__module__ or "_H5Source" in type(v).__name__:
                    return True
        return False
    except Exception:  # noqa: BLE001 - an unknown graph: let pickling tell
        return False


@functools.lru_cache(maxsize=8)
def _open_cached(spec: DataSpec) -> Any:
    path = Path(spec.path)
    st = path.stat()
    if spec.mtime_ns and st.st_mtime_ns != spec.mtime_ns:
        raise OSError(f"{path} changed since the job started")
    ny, nx, ky, kx = spec.shape
    if spec.kind == "empad":
        from ..io.empad import FRAME_COLS, FRAME_ROWS_RAW

        mm = np.memmap(path, dtype=spec.dtype, mode="r", offset=spec.offset,
                       shape=(ny, nx, FRAME_ROWS_RAW, FRAME_COLS))
        return mm[:, :, :ky, :kx]
    if spec.kind == "npy":
        return np.memmap(path, dtype=spec.dtype, mode="r", offset=spec.offset, shape=spec.shape)
    if spec.kind == "hdf5":
        import h5py

        from ..io.filters import ensure_filters

        ensure_filters()
        f = h5py.File(path, "r")
        return f[spec.name]
    raise ValueError(f"unknown data kind {spec.kind!r}")


class _SyncDask:
    """A Dask array read inside a task with the synchronous scheduler (never the cluster's)."""

    def __init__(self, arr: Any) -> None:
        self.arr = arr
        self.shape = tuple(int(n) for n in arr.shape)
        self.dtype = np.dtype(arr.dtype)
        self.ndim = 4

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.arr[key].compute(scheduler="synchronous"))
