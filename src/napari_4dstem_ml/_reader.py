"""npe2 reader: 4D-STEM files -> one lazy 4D image layer per data set.

``get_reader`` is cheap (extension/magic check through :func:`io.can_read`) and returns
``None`` for files it does not handle, so napari can try other readers; it claims the files
meant for it even when they are broken (a truncated EMPAD ``.raw`` with its XML or a
``scan_x*_y*`` name, a ``.npy`` declaring a 3D/4D array, any HDF5 file), so that opening one
raises the reader's clear error (napari shows it as a notification) instead of "no reader".
Data the engine cannot use (complex, text, ...) are refused at open; ``float16`` is converted. The layer carries the
:class:`~napari_4dstem_ml.dataset.Dataset4D` in ``metadata["dataset4d"]``; the plugin's widgets
find data sets through it. An HDF5/NPZ container holding several candidate 4D arrays opens as
one layer per candidate (named ``file:candidate``); a broken file raises the reader's
``ReaderError`` (a ``ValueError`` naming the file), which napari shows as a notification.
"""

from __future__ import annotations

from pathlib import Path

from . import io

AXIS_LABELS = ("scan_y", "scan_x", "ky", "kx")


def get_reader(path):
    """Return a reader function for ``path`` (one path, or a list of one), else ``None``."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        if not io.can_read(path):
            return None
    except Exception:  # noqa: BLE001 - a reader probe must never raise
        return None
    return read_4dstem


def read_4dstem(path) -> list[tuple]:
    """Load ``path`` into napari layer data tuples (lazy 4D image layers)."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    path = Path(path)
    try:
        datasets = [(path.name, io.load(path))]
    except io.ScanShapeRequired as err:  # a stack of frames: one scan row until a shape is chosen
        datasets = [(path.name, _unknown_scan_shape(path, err.n_frames))]
    except Exception as err:
        candidates = getattr(err, "candidates", None)
        if not candidates:
            raise
        option = getattr(err, "option", "dataset")
        datasets = []
        for c in candidates:
            try:
                datasets.append((f"{path.name}:{c}", io.load(path, **{option: c})))
            except ValueError:
                continue  # e.g. a 3D stack with no scan shape: not openable without asking
        if not datasets:
            raise
    try:
        return [layer_data(ds, name) for name, ds in datasets]
    except (OSError, KeyError, RuntimeError, EOFError, MemoryError) as err:  # reading the data
        raise io.ReaderError(f"{path}: cannot read the data ({err})", path) from err


def _unknown_scan_shape(path: Path, n_frames: int):
    """A stack of ``n_frames`` frames whose scan shape the file does not say, opened as a
    ``1 x n_frames`` scan (``scan_shape_known`` False) for the browser's scan-shape field to
    reshape without re-reading; a notification proposes the shapes that fit."""
    from dataclasses import replace

    from .io.shapes import describe_factorisations

    ds = io.load(path, scan_shape=(1, n_frames))
    meta = {**ds.metadata, "scan_shape_unknown": True, "n_frames": n_frames,
            "scan_shape_from": "unknown: shown as one row until a scan shape is chosen"}
    try:
        from napari.utils.notifications import show_info

        show_info(f"{path.name}: {n_frames} frames and no scan shape in the file; shown as one "
                  f"row. Choose the scan shape in the 4D-STEM browser ({describe_factorisations(n_frames)}).")
    except Exception:  # noqa: BLE001 - a notification is a courtesy; the layer opens anyway
        pass
    return replace(ds, metadata=meta)


def layer_data(ds, name: str) -> tuple:
    """The napari layer data tuple of a :class:`Dataset4D` (lazy data, calibrated axes)."""
    from .dataset import napari_unit
    from .display import pattern_limits

    kwargs = {
        "name": name,
        "scale": ds.scale(),
        "units": tuple(napari_unit(u) for u in ds.units()),
        "axis_labels": AXIS_LABELS,
        "contrast_limits": pattern_limits(ds.data, "linear"),
        "rgb": False,
        "multiscale": False,
        "colormap": "gray",
        # what ``stemml info --json`` prints: shapes, calibrations and where each came from
        "metadata": {"dataset4d": ds, "stemml_info": ds.info()},
    }
    return (ds.data, kwargs, "image")


# ---------------------------------------------------------------------------------------------
# model checkpoints (.pt): dropped onto napari, they join the session's models (no layer)
# ---------------------------------------------------------------------------------------------
TRAINING_WIDGET = "Train & reconstruct"


def get_model_reader(path):
    """Return a reader for a ``.pt`` model checkpoint (a torch zip file), else ``None``."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(str(path))
    if p.suffix.lower() != ".pt" or not p.is_file():
        return None
    try:
        with open(p, "rb") as fh:
            if fh.read(2) != b"PK":  # torch.save's zip container
                return None
    except OSError:
        return None
    return read_model


def read_model(path) -> list[tuple]:
    """Load a checkpoint into the current viewer's session (Apply then offers it) and dock
    the training widget, which lists it with its description. Returns napari's "no layer"
    sentinel. A broken checkpoint raises ``CheckpointError`` naming the file."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    import napari

    from .widgets.models import load_model_file
    from .widgets.session import session_for

    viewer = napari.current_viewer()
    if viewer is None:
        raise ValueError(f"{path}: a model is opened into a napari viewer, and none is open")
    entry = load_model_file(session_for(viewer), path)
    try:
        _, widget = viewer.window.add_plugin_dock_widget("napari-4dstem-ml", TRAINING_WIDGET)
        widget.select_model(entry.name)
    except Exception:  # noqa: BLE001 - docking is a convenience; the model is loaded
        pass
    from napari.utils.notifications import show_info

    show_info(f"model {entry.name} loaded ({entry.kind}): choose a data set and Apply")
    return [(None,)]
