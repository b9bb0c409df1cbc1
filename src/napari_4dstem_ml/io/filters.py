"""The HDF5 compression filters detectors write with (bitshuffle-LZ4, LZ4, Blosc, Zstd, ...),
registered with HDF5 through ``hdf5plugin`` once, before any HDF5 read of this package."""

from __future__ import annotations

__all__ = ["ensure_filters"]

_LOADED = False


def ensure_filters() -> None:
    """Register the filters (importing ``hdf5plugin`` does it), once."""
    global _LOADED
    if not _LOADED:
        import hdf5plugin  # noqa: F401 - registers the filters on import

        _LOADED = True
