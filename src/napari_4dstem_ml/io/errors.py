"""Exceptions raised by the readers (all are ``ValueError`` subclasses).

- :class:`ReaderError`: a file a reader handles is broken or not what was expected; the
  message names the file and what was expected.
- :class:`AmbiguousDatasetError`: a container (HDF5, ``.npz``, multi-signal RosettaSciIO
  file) holds several candidate 3D/4D arrays and none was chosen; ``candidates`` lists
  them (pass one back as ``dataset=`` / ``key=``).
- :class:`ScanShapeRequired`: a stack of ``n_frames`` frames whose scan shape the file does
  not say; pass ``scan_shape=(ny, nx)``.
- :class:`ExternalDataError`: reading the data would read other files (HDF5 external
  storage, virtual datasets, external links); pass ``allow_external=True`` to allow it.

Each class names in ``option`` the ``load`` keyword that resolves it (``None``: none does).
"""

from __future__ import annotations

from pathlib import Path


class ReaderError(ValueError):
    """A file that a reader handles but that is broken or not what was expected."""

    #: the ``load`` keyword that resolves the error, if one does
    option: str | None = None

    def __init__(self, message: str, path: str | Path | None = None,
                 option: str | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else Path(path)
        if option is not None:
            self.option = option


class AmbiguousDatasetError(ReaderError):
    """Several candidate arrays and no choice: ``candidates`` holds their names/paths."""

    def __init__(self, message: str, path: str | Path | None, candidates: list[str],
                 option: str = "dataset") -> None:
        super().__init__(message, path)
        self.candidates = list(candidates)
        #: the ``load`` keyword that picks one candidate ("dataset" or "key")
        self.option = option


class ScanShapeRequired(ReaderError):
    """A stack of ``n_frames`` diffraction patterns whose scan shape is unknown."""

    option = "scan_shape"

    def __init__(self, message: str, path: str | Path | None, n_frames: int) -> None:
        super().__init__(message, path)
        self.n_frames = int(n_frames)


class ExternalDataError(ReaderError):
    """The data would be read from other files than the one opened (HDF5 external storage,
    virtual datasets, external links); refused unless ``allow_external=True``."""

    option = "allow_external"

    def __init__(self, message: str, path: str | Path | None, others: list[str]) -> None:
        super().__init__(message, path)
        self.others = list(others)
