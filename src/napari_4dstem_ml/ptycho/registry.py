"""The ptychography back ends by name: the one module that knows which exist.

:mod:`.backends` holds the interface and the data a back end is given, and imports no back
end; each back end (:mod:`.quantem_backend`) imports the interface, and this module imports the
back ends — only when one is asked for, so ``napari_4dstem_ml.ptycho`` imports without them.
"""

from __future__ import annotations

from .backends import Backend

__all__ = ["BACKENDS", "get_backend"]

#: back ends this package can drive
BACKENDS = ("quantem",)


def get_backend(name: str) -> Backend:
    """The back end called ``name`` ("quantem"); :class:`~.backends.BackendUnavailableError`
    when its library is missing, ``ValueError`` for an unknown name."""
    if name == "quantem":
        from .quantem_backend import QuantemBackend

        return QuantemBackend()
    raise ValueError(f"unknown ptychography back end {name!r}; available: {BACKENDS}")
