"""Readers: one headless entry point, :func:`load`, returning a lazy :class:`Dataset4D`.

``load(path, dataset=, key=, scan_shape=, reader=)``; ``can_read(path)`` (cheap);
``list_datasets(path)`` (3D/4D arrays of an HDF5 / ``.npz`` file). Errors are
:class:`ReaderError` (a ``ValueError``), with the subclasses :class:`AmbiguousDatasetError`
(``.candidates``, ``.option``) and :class:`ScanShapeRequired` (``.n_frames``).
"""

from __future__ import annotations

from .errors import AmbiguousDatasetError, ReaderError, ScanShapeRequired
from .registry import EXTENSIONS, can_read, list_datasets, load, reader_for

__all__ = ["EXTENSIONS", "AmbiguousDatasetError", "ReaderError", "ScanShapeRequired",
           "can_read", "list_datasets", "load", "reader_for"]
