"""Readers: one headless entry point, :func:`load`, returning a lazy :class:`Dataset4D`.

``load(path, dataset=, key=, scan_shape=, reader=)``; ``can_read(path)`` (cheap);
``list_datasets(path)`` (3D/4D arrays of an HDF5 / ``.npz`` file). Errors are
:class:`ReaderError` (a ``ValueError``), with the subclasses :class:`AmbiguousDatasetError`
(``.candidates``, ``.option``), :class:`ScanShapeRequired` (``.n_frames``) and
:class:`ExternalDataError` (``.others``: HDF5 data in other files, ``allow_external=True``).
"""

from __future__ import annotations

from .errors import AmbiguousDatasetError, ExternalDataError, ReaderError, ScanShapeRequired
from .registry import EXTENSIONS, can_read, check_regular_file, list_datasets, load, reader_for

__all__ = ["EXTENSIONS", "AmbiguousDatasetError", "ExternalDataError", "ReaderError",
           "ScanShapeRequired", "can_read", "check_regular_file", "list_datasets", "load",
           "reader_for"]
