"""Per-viewer state shared by the plugin's widgets: the 4D data sets and the diffraction view.

napari has one world per viewer, and a 4D data set ``(scan_y, scan_x, ky, kx)`` does not share
it with 2D scan-plane images (virtual images, labels, reconstructions), which napari would align
with the detector axes. So the plugin splits the two planes:

- the **main viewer** is the scan plane (Å): navigation image, scan-position marker, virtual
  detector images, CoM/iCoM, labels, reconstructions;
- the **diffraction view** (a second :class:`~napari.components.ViewerModel`, shown by the
  4D-STEM browser dock) is the detector plane (mrad or Å⁻¹): the pattern at the current scan
  position, the mean pattern, the detector shapes, learned detector masks.

A 4D image layer opened into the main viewer (by this plugin's reader, a sample, or any other
4D image) is *adopted*: its data set is registered here and the layer leaves the main viewer.
"""

from __future__ import annotations

import functools
import hashlib
import sys
import weakref
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.components import ViewerModel
from napari.utils.notifications import show_error
from psygnal import Signal
from qtpy.QtCore import QEvent, QObject, QTimer

from .. import display
from ..dataset import USER, Calibration, Dataset4D, napari_unit
from .settings import Settings

if TYPE_CHECKING:
    import napari

PATTERN_LAYER = "diffraction pattern"
MEAN_LAYER = "mean diffraction pattern"
MARKER_LAYER = "scan position"
#: interval between two deferred layer updates (ms): the event loop runs in between
DEFER_MS = 10
#: scan rows of lazy data kept in memory for browsing (bytes)
ROW_CACHE_BYTES = 64 * 2**20


def nav_layer_name(name: str) -> str:
    return f"navigation: {name}"


#: ``layer.metadata["role"]`` of the scan-plane images the plugin makes or loads (see
#: :data:`napari_4dstem_ml.comparison.ROLES`); ``layer.metadata["dataset"]`` names the data set
ROLE_KEY = "role"
DATASET_KEY = "dataset"
#: ``layer.metadata`` key: the layer's visibility while its data set was last current (the
#: layers of the other data sets are hidden, so that two scans never overlap on the canvas)
GROUP_VISIBLE_KEY = "visible_in_group"


def layer_role(layer) -> str | None:
    return layer.metadata.get(ROLE_KEY) if hasattr(layer, "metadata") else None


def layer_dataset(layer) -> str | None:
    return layer.metadata.get(DATASET_KEY) if hasattr(layer, "metadata") else None


@dataclass
class SessionModel:
    """A model the session knows: trained here or loaded from a checkpoint.

    ``kind`` is "linear" or "conv4d"; ``info`` the checkpoint-style description
    (``train_summary``, ``metrics``, ...); ``source`` where it came from (a file path, or
    "trained in this session").
    """

    name: str
    kind: str
    model: Any
    model_config: Any
    preprocessor: Any
    info: dict[str, Any] = field(default_factory=dict)
    source: str = "trained in this session"
    path: str | None = None

    @property
    def role(self) -> str:
        """The comparison role of its reconstructions ("linear" or "cnn")."""
        return "linear" if self.kind == "linear" else "cnn"


@dataclass(frozen=True)
class RegisteredLabel:
    """A label put onto a data set's scan grid (cached per label and data set)."""

    image: np.ndarray
    coverage: np.ndarray
    report: str
    params: dict[str, Any]


def camera(viewer):
    """A viewer's camera (``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def fingerprint(data) -> str:
    """A short content hash of an array (label images are small: cheap)."""
    a = np.ascontiguousarray(np.asarray(data))
    h = hashlib.sha1(str((a.shape, a.dtype.str)).encode())
    h.update(a.tobytes())
    return h.hexdigest()[:16]


class Session:
    """State of one main viewer: data sets, current data set, scan position, display mode."""

    dataset_changed = Signal(str)
    datasets_changed = Signal()
    position_changed = Signal(int, int)
    models_changed = Signal()
    #: a data set's calibration was edited (its name); layers are already rescaled
    calibration_changed = Signal(str)

    def __init__(self, viewer: napari.Viewer) -> None:
        viewer = unwrap(viewer)
        self._viewer_ref = weakref.ref(viewer)
        self.diffraction = ViewerModel(title="diffraction")
        self.datasets: dict[str, Dataset4D] = {}
        self.current: str | None = None
        self.position: tuple[int, int] = (0, 0)
        self.display_mode = "log"
        self.exponent = 0.25
        self._limits: dict[tuple[str, str, float], tuple[float, float]] = {}
        self._rows: dict[tuple[int, int], np.ndarray] = {}  # scan rows read for browsing
        self.models: dict[str, SessionModel] = {}
        self._runs: dict[str, int] = {}
        self.registrations: dict[tuple[str, str], RegisteredLabel] = {}
        self._groups_hidden = False
        # layer updates from workers, run one per event-loop turn (coalesced by key): a burst
        # of new layers never holds the GUI thread for long
        self._deferred: dict = {}
        self._defer_timer = QTimer()
        self._defer_timer.setSingleShot(True)
        self._defer_timer.setInterval(DEFER_MS)
        self._defer_timer.timeout.connect(self._run_deferred)
        #: each data set's calibration as its file stated it (for "Revert to file")
        self.file_calibrations: dict[str, Calibration] = {}
        self.settings = Settings()
        viewer.layers.events.inserted.connect(self._on_inserted)
        for layer in list(viewer.layers):
            self._maybe_adopt(layer)

    # -- data sets -----------------------------------------------------------
    @property
    def viewer(self) -> napari.Viewer | None:
        return self._viewer_ref()

    @property
    def dataset(self) -> Dataset4D | None:
        return None if self.current is None else self.datasets[self.current]

    def _on_inserted(self, event) -> None:
        layer = event.value
        if is_4d_layer(layer):
            # not inside the LayerList's own insert event: remove on the next event-loop turn
            QTimer.singleShot(0, lambda: self._maybe_adopt(layer))

    def _maybe_adopt(self, layer) -> None:
        viewer = self.viewer
        if viewer is None or not is_4d_layer(layer) or layer not in viewer.layers:
            return
        ds = layer.metadata.get("dataset4d") or dataset_from_layer(layer)
        viewer.layers.remove(layer)
        self.add_dataset(layer.name, ds)

    def add_dataset(self, name: str, ds: Dataset4D, make_current: bool = True) -> str:
        """Register ``ds`` under a unique ``name``; returns the name used."""
        base, k = name, 1
        while name in self.datasets:
            k += 1
            name = f"{base} [{k}]"
        self.datasets[name] = ds
        self.file_calibrations[name] = ds.calibration
        self.datasets_changed.emit()
        if make_current or self.current is None:
            self.set_current(name)
        return name

    def set_current(self, name: str) -> None:
        """Make data set ``name`` current: its pattern, its group of layers shown (the other
        data sets' layers hidden), the view fitted to its scan."""
        if name not in self.datasets:
            raise ValueError(f"no 4D data set named {name!r}; have {list(self.datasets)}")
        previous, self.current = self.current, name
        ds = self.datasets[name]
        ny, nx = ds.scan_shape
        self.position = (ny // 2, nx // 2)
        self._update_pattern(reset_limits=True)
        self._update_marker()
        self._rescale_dataset_layers(name)
        if previous != name or self._groups_hidden:
            self._show_group(name)
            self.fit_view(name)
        self.dataset_changed.emit(name)
        self.position_changed.emit(*self.position)

    def _show_group(self, name: str | None) -> None:
        """Data set ``name``'s layers as they were when it was last current; the other data
        sets' layers hidden (their visibility kept in ``metadata[GROUP_VISIBLE_KEY]``). Each
        change of visibility redraws napari's scene: they are applied one per event-loop turn
        (:meth:`defer`), hidden ones first."""
        viewer = self.viewer
        self._groups_hidden = name is None
        if viewer is None:
            return
        hide, show = [], []
        for layer in viewer.layers:
            owner = layer_dataset(layer)
            if owner is None or owner not in self.datasets:
                continue
            if owner == name:
                if GROUP_VISIBLE_KEY in layer.metadata:
                    (show if layer.metadata.pop(GROUP_VISIBLE_KEY) else hide).append(layer)
            elif GROUP_VISIBLE_KEY not in layer.metadata:
                pending = self._deferred.get(("visible", id(layer)))
                was = pending.visible if pending is not None else bool(layer.visible)
                layer.metadata[GROUP_VISIBLE_KEY] = was
                hide.append(layer)
        for layer in hide + show:
            self.defer(("visible", id(layer)), _Visibility(viewer, layer, layer in show))

    def hide_groups(self) -> None:
        """Hide every data set's layers (e.g. a live acquisition is shown instead); the
        current one's come back when a data set is made current again."""
        self._show_group(None)

    def group_layers(self, name: str, scan_grid_only: bool = True) -> list:
        """The main viewer's layers of data set ``name`` (by default those on its scan grid)."""
        viewer = self.viewer
        if viewer is None:
            return []
        return [layer for layer in viewer.layers if layer_dataset(layer) == name
                and not (scan_grid_only and layer.metadata.get("own_grid"))]

    def fit_view(self, name: str | None = None) -> None:
        """Fit the main view to data set ``name``'s scan field (default: the current one)."""
        viewer = self.viewer
        name = name or self.current
        if viewer is None or name not in self.datasets:
            return
        layers = [layer for layer in self.group_layers(name) if layer.ndim == 2
                  and layer.__class__.__name__ == "Image"]
        if not layers and MARKER_LAYER in viewer.layers:
            return  # nothing of its own drawn yet: fitted when its navigation image arrives
        if layers:
            viewer.reset_view(layers=layers)

    # -- calibration and scan shape (the session's data set is the one truth) ---------------
    def set_calibration(self, name: str, source: str = USER, **changes) -> Calibration:
        """Edit data set ``name``'s calibration (fields of :class:`Calibration`; provenance
        ``source``, "user" by default); its layers are rescaled and ``calibration_changed``
        is emitted. Returns the new calibration (``ValueError`` for an invalid value)."""
        cal = self.datasets[name].calibration.with_(source=source, **changes)
        self._apply_calibration(name, cal)
        return cal

    def revert_calibration(self, name: str) -> Calibration:
        """Data set ``name``'s calibration as its file stated it (edits dropped)."""
        cal = self.file_calibrations[name]
        self._apply_calibration(name, cal)
        return cal

    def _apply_calibration(self, name: str, cal: Calibration) -> None:
        self.datasets[name] = replace(self.datasets[name], calibration=cal)
        self._limits = {k: v for k, v in self._limits.items() if k[0] != name}
        self._rescale_dataset_layers(name)
        if name == self.current:
            self._update_marker()
        self.calibration_changed.emit(name)

    def set_scan_shape(self, name: str, scan_shape: tuple[int, int]) -> Dataset4D:
        """View data set ``name``'s frames as a ``(ny, nx)`` scan (lazily, without
        re-reading); its scan-plane layers of the old shape are reshaped in place (frame
        ``i = iy * nx + ix``), its regions and cached label registrations dropped.
        ``ValueError`` (naming the frame count and the shapes that fit) when it does not fit."""
        ds = self.datasets[name]
        old = ds.scan_shape
        new_ds = ds.with_scan_shape(tuple(scan_shape))
        self.datasets[name] = new_ds
        viewer = self.viewer
        for layer in list(viewer.layers) if viewer is not None else []:
            if layer_dataset(layer) != name or layer.metadata.get("own_grid"):
                continue
            if layer.__class__.__name__ == "Image" and tuple(layer.data.shape) == old:
                layer.data = np.asarray(layer.data).reshape(new_ds.scan_shape)
            elif layer.__class__.__name__ == "Shapes":  # regions drawn on the old grid
                viewer.layers.remove(layer)
        self.registrations = {k: v for k, v in self.registrations.items() if k[1] != name}
        self.datasets_changed.emit()
        self.set_current(name)
        if viewer is not None:
            self.fit_view(name)
        return new_ds

    def _rescale_dataset_layers(self, name: str) -> None:
        """Layers derived from data set ``name`` get its scan / detector calibration."""
        ds = self.datasets[name]
        viewer = self.viewer
        scan = tuple(ds.scale()[:2])
        for layer in list(viewer.layers) if viewer is not None else []:
            if layer_dataset(layer) == name and layer.ndim == 2:
                if tuple(layer.scale) != scan and not layer.metadata.get("own_grid"):
                    layer.scale = scan
        det = tuple(ds.scale()[2:])
        for layer in self.diffraction.layers:
            if layer.name in (MEAN_LAYER, PATTERN_LAYER):
                set_scale(layer, det)

    # -- models ------------------------------------------------------------------
    def add_model(self, entry: SessionModel) -> str:
        """Register a model under a unique name (returns it) and tell the widgets."""
        base, name, k = entry.name, entry.name, 1
        while name in self.models:
            k += 1
            name = f"{base} [{k}]"
        entry.name = name
        self.models[name] = entry
        self.models_changed.emit()
        return name

    def next_run_name(self, kind: str, dataset: str) -> str:
        """``"linear #3 on <data set>"``: numbered per model kind in this session."""
        self._runs[kind] = n = self._runs.get(kind, 0) + 1
        return f"{kind} #{n} on {dataset}"

    # -- scan position ---------------------------------------------------------
    def set_position(self, iy: int, ix: int) -> tuple[int, int]:
        """Move to scan position ``(iy, ix)`` (clipped to the scan); returns the position used."""
        ds = self.dataset
        if ds is None:
            return self.position
        ny, nx = ds.scan_shape
        pos = (int(np.clip(iy, 0, ny - 1)), int(np.clip(ix, 0, nx - 1)))
        if pos == self.position and PATTERN_LAYER in self.diffraction.layers:
            return pos
        self.position = pos
        self._update_pattern()
        self._update_marker()
        self.position_changed.emit(*pos)
        return pos

    def set_position_world(self, world_yx) -> tuple[int, int]:
        """Move to the scan position under a main-viewer world coordinate ``(y, x)`` in Å."""
        ds = self.dataset
        if ds is None:
            return self.position
        dy, dx = ds.scale()[:2]
        return self.set_position(round(float(world_yx[0]) / dy), round(float(world_yx[1]) / dx))

    # -- display ---------------------------------------------------------------
    def set_display(self, mode: str, exponent: float | None = None) -> None:
        if mode not in display.DISPLAY_MODES:
            raise ValueError(f"display mode must be one of {display.DISPLAY_MODES}, got {mode!r}")
        self.display_mode = mode
        if exponent is not None:
            self.exponent = float(exponent)
        self._update_pattern(reset_limits=True)
        if MEAN_LAYER in self.diffraction.layers:
            layer = self.diffraction.layers[MEAN_LAYER]
            raw = layer.metadata.get("raw")
            if raw is not None:
                layer.data = display.transform(raw, self.display_mode, self.exponent)
                layer.contrast_limits = display.robust_limits(layer.data)

    def pattern_limits(self) -> tuple[float, float]:
        key = (self.current or "", self.display_mode, self.exponent)
        if key not in self._limits:
            self._limits[key] = display.pattern_limits(
                self.dataset.data, self.display_mode, exponent=self.exponent
            )
        return self._limits[key]

    def detector_layer_kwargs(self, name: str | None = None) -> dict:
        ds = self.datasets[name] if name in self.datasets else self.dataset
        units = tuple(napari_unit(u) for u in ds.units()[2:])
        return {"scale": ds.scale()[2:], "units": units, "axis_labels": ("ky", "kx")}

    def scan_layer_kwargs(self, name: str | None = None) -> dict:
        ds = self.datasets[name] if name in self.datasets else self.dataset
        units = tuple(napari_unit(u) for u in ds.units()[:2])
        return {"scale": ds.scale()[:2], "units": units, "axis_labels": ("y", "x")}

    def raw_pattern(self) -> np.ndarray:
        """The current pattern ``(ky, kx)``, untransformed: ``data[iy, ix]``. Lazy data are
        read a whole scan row at a time and the rows kept (:data:`ROW_CACHE_BYTES`), so that
        browsing along a row reads nothing more (one pattern of a Dask/HDF5 array costs as
        much as its row)."""
        ds, (iy, ix) = self.dataset, self.position
        if isinstance(ds.data, np.ndarray):  # in memory, or a memory map: direct
            return np.asarray(ds.data[iy, ix])
        key = (id(ds.data), iy)
        row = self._rows.pop(key, None)
        if row is None:
            row = np.asarray(ds.data[iy])
            while self._rows and sum(r.nbytes for r in self._rows.values()) + row.nbytes > \
                    ROW_CACHE_BYTES:
                self._rows.pop(next(iter(self._rows)))
        self._rows[key] = row  # most recent last
        return row[ix]

    def _update_pattern(self, reset_limits: bool = False) -> None:
        ds = self.dataset
        if ds is None:
            return
        shown = display.transform(self.raw_pattern(), self.display_mode, self.exponent)
        layers = self.diffraction.layers
        if PATTERN_LAYER in layers and layers[PATTERN_LAYER].data.shape == shown.shape:
            layer = layers[PATTERN_LAYER]
            layer.data = shown
            if reset_limits:
                set_scale(layer, self.detector_layer_kwargs()["scale"])
                layer.contrast_limits = self.pattern_limits()
        else:
            if PATTERN_LAYER in layers:
                layers.remove(PATTERN_LAYER)
            self.diffraction.add_image(
                shown,
                name=PATTERN_LAYER,
                colormap="inferno",
                contrast_limits=self.pattern_limits(),
                **self.detector_layer_kwargs(),
            )
            self.diffraction.reset_view()
        self.diffraction.layers[PATTERN_LAYER].metadata["position"] = self.position

    def _update_marker(self) -> None:
        viewer = self.viewer
        if viewer is None or self.dataset is None:
            return
        pt = np.array([self.position], dtype=float)
        if MARKER_LAYER in viewer.layers:
            layer = viewer.layers[MARKER_LAYER]
            scale = self.scan_layer_kwargs()["scale"]
            if not np.allclose(layer.scale[-2:], scale):  # costly (napari's dims): only if new
                layer.scale = scale
            if not np.array_equal(np.round(layer.data), pt):
                self._moving_marker = True
                try:
                    layer.data = pt
                finally:
                    self._moving_marker = False
        else:
            layer = viewer.add_points(
                pt,
                name=MARKER_LAYER,
                symbol="cross",
                size=max(2.0, max(self.dataset.scan_shape) / 24),
                face_color="cyan",
                border_color="cyan",
                **self.scan_layer_kwargs(),
            )
            # dragging the marker (select mode) moves the scan position
            layer.events.data.connect(self._on_marker_moved)

    def _on_marker_moved(self, event) -> None:
        layer = event.source
        if getattr(self, "_moving_marker", False):  # our own update, not the user's drag
            return
        if len(layer.data):
            iy, ix = np.round(np.asarray(layer.data[-1], float)[-2:]).astype(int)
            if (iy, ix) != self.position:
                self.set_position(iy, ix)

    # -- deferred layer updates ---------------------------------------------------
    def defer(self, key, fn) -> None:
        """Run ``fn()`` on a later event-loop turn, one deferred update per turn; a pending
        update with the same ``key`` is replaced (only the latest image of a layer is drawn)."""
        self._deferred[key] = fn
        if not self._defer_timer.isActive():
            self._defer_timer.start()

    def _run_deferred(self) -> None:
        import time

        took = 0.0
        if self._deferred:
            key = next(iter(self._deferred))
            t0 = time.perf_counter()
            self._deferred.pop(key)()
            took = time.perf_counter() - t0
        if self._deferred:
            # the event loop gets at least twice the time the last update took (software
            # OpenGL on a busy machine draws slowly: updates are spaced out, not queued up)
            self._defer_timer.start(int(min(500, max(DEFER_MS, 2000 * took))))

    def after_deferred(self, fn) -> None:
        """Run ``fn()`` once every update deferred so far has run (a worker's end: its
        results are all shown before the widget says it is done), still one per turn."""
        self._after_count = getattr(self, "_after_count", 0) + 1
        self.defer(("after", self._after_count), fn)

    def flush_deferred(self) -> None:
        """Run every pending deferred update now (a worker finished: its results shown)."""
        self._defer_timer.stop()
        while self._deferred:
            key = next(iter(self._deferred))
            self._deferred.pop(key)()

    # -- layer helpers ---------------------------------------------------------
    def show_scan_image(
        self,
        name: str,
        data: np.ndarray,
        *,
        dataset: str | None = None,
        role: str | None = None,
        metadata: dict | None = None,
        **kwargs,
    ):
        """Add or update (in place) a 2D scan-plane image layer in the main viewer.

        ``dataset`` (default: the current one) gives the layer's calibration and is stored in
        its metadata with ``role`` (see :data:`ROLE_KEY`) and ``metadata``.
        """
        viewer = self.viewer
        dataset = dataset or self.current
        meta = {DATASET_KEY: dataset, **({ROLE_KEY: role} if role else {}), **(metadata or {})}
        scan_kw = self.scan_layer_kwargs(dataset)
        if name in viewer.layers and viewer.layers[name].data.shape == data.shape:
            layer = viewer.layers[name]
            layer.data = data
            layer.contrast_limits = display.robust_limits(data, 0.1, 99.9)
            if tuple(layer.scale) != tuple(kwargs.get("scale", scan_kw["scale"])):
                layer.scale = kwargs.get("scale", scan_kw["scale"])
            layer.metadata.update(meta)
            return layer
        if name in viewer.layers:
            viewer.layers.remove(name)
        kw = {**scan_kw, "colormap": "gray", **kwargs}
        if dataset != self.current:  # another data set's group: shown when it is current
            meta[GROUP_VISIBLE_KEY] = bool(kw.get("visible", True))
            kw["visible"] = False
        layer = viewer.add_image(
            data,
            name=name,
            contrast_limits=display.robust_limits(data, 0.1, 99.9),
            metadata=meta,
            **kw,
        )
        if MARKER_LAYER in viewer.layers:  # keep the marker on top
            viewer.layers.move(viewer.layers.index(MARKER_LAYER), len(viewer.layers))
        return layer

    def show_detector_image(self, name: str, data: np.ndarray, **kwargs):
        """Add or update (in place) a 2D detector-plane image layer in the diffraction view."""
        layers = self.diffraction.layers
        if name in layers and layers[name].data.shape == data.shape:
            layers[name].data = data
            layers[name].contrast_limits = kwargs.get(
                "contrast_limits", display.robust_limits(data, 0.1, 99.9)
            )
            for key in ("scale", "translate"):
                if key in kwargs:
                    setattr(layers[name], key, kwargs[key])
            return layers[name]
        if name in layers:
            layers.remove(name)
        kw = {
            **self.detector_layer_kwargs(),
            "colormap": "gray",
            "contrast_limits": display.robust_limits(data, 0.1, 99.9),
            **kwargs,
        }
        return self.diffraction.add_image(data, name=name, **kw)


class _Visibility:
    """A deferred visibility change of one layer (skipped if the layer has gone)."""

    def __init__(self, viewer, layer, visible: bool) -> None:
        self.viewer, self.layer, self.visible = viewer, layer, visible

    def __call__(self) -> None:
        if self.layer in self.viewer.layers and self.layer.visible != self.visible:
            self.layer.visible = self.visible


def set_scale(layer, scale) -> None:
    """``layer.scale = scale`` unless it is that already (napari recomputes its dims and
    redraws on every assignment: costly with many layers)."""
    scale = tuple(float(v) for v in scale)
    if not np.allclose(tuple(layer.scale)[-len(scale):], scale):
        layer.scale = scale


def is_4d_layer(layer) -> bool:
    return (
        layer.__class__.__name__ == "Image"
        and getattr(layer, "ndim", 0) == 4
        and not getattr(layer, "rgb", False)
        and not getattr(layer, "multiscale", False)
    )


def dataset_from_layer(layer) -> Dataset4D:
    """A :class:`Dataset4D` for a foreign 4D image layer (calibrated from its scale if it has units)."""
    units = [str(u) for u in getattr(layer, "units", ())]
    scale = tuple(float(s) for s in layer.scale)
    scan_units = {"angstrom": "A", "nanometer": "nm"}.get(units[0] if units else "", "pixels")
    det_units = {"milliradian": "mrad", "1 / angstrom": "A^-1"}.get(
        units[2] if units else "", "pixels"
    )
    cal = Calibration(
        scan_step=scale[:2],
        scan_units=scan_units,
        detector_pixel=scale[2:],
        detector_units=det_units,
    )
    return Dataset4D(layer.data, cal, reader="napari-layer")


class JobError(Exception):
    """A worker job failed with a ``RuntimeError`` (re-raised as this so that the worker's
    ``errored`` signal fires: superqt treats a ``RuntimeError`` as an aborted thread and emits
    neither ``errored`` nor ``finished``)."""


def guarded(func):
    """Wrap a worker generator function so that its ``RuntimeError`` reaches ``errored``."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return (yield from func(*args, **kwargs))
        except RuntimeError as err:
            raise JobError(f"{type(err).__name__}: {err}") from err

    return wrapper


def compact_widget(widget) -> None:
    """Keep a dock widget narrow (it must fit beside napari's canvas on a 1366 px screen):
    combo boxes do not grow with long layer names, spin boxes ask for little width; both
    still widen with the dock."""
    from qtpy.QtWidgets import QAbstractSpinBox, QComboBox

    for box in widget.findChildren(QComboBox):
        box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        box.setMinimumContentsLength(6)
    for box in widget.findChildren(QAbstractSpinBox):
        box.setMinimumWidth(72)
    widget.setMaximumWidth(640)


def error_reporter(what: str, set_text):
    """An ``errored`` slot: a notification plus the message in the widget's status line."""

    def on_error(err: BaseException) -> None:
        msg = f"{what} failed: {err}"
        set_text(msg)
        show_error(msg)

    return on_error


_SESSIONS: dict[int, Session] = {}


def unwrap(viewer: napari.Viewer) -> napari.Viewer:
    """The viewer behind napari's ``PublicOnlyProxy`` (plugin widgets receive a proxy)."""
    return getattr(viewer, "__wrapped__", viewer)


def session_for(viewer: napari.Viewer) -> Session:
    """The :class:`Session` of ``viewer`` (created on first use; proxies share it)."""
    viewer = unwrap(viewer)
    for key in [k for k, s in _SESSIONS.items() if s.viewer is None]:
        del _SESSIONS[key]
    s = _SESSIONS.get(id(viewer))
    if s is None or s.viewer is not viewer:
        s = _SESSIONS[id(viewer)] = Session(viewer)
    return s


def drop_session(viewer: napari.Viewer) -> None:
    """Forget the session of ``viewer`` (called when the viewer closes)."""
    s = _SESSIONS.pop(id(unwrap(viewer)), None)
    if s is not None:
        s._defer_timer.stop()  # nothing more is drawn into a closing window
        s._deferred.clear()
        if s.viewer is not None:
            s.viewer.layers.events.inserted.disconnect(s._on_inserted)
        s.diffraction.layers.clear()


class _CloseWatcher(QObject):
    """Calls its callbacks once when the watched window gets a Close event."""

    def __init__(self, parent: QObject) -> None:
        super().__init__(parent)
        self.callbacks: list = []

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt API)
        if event.type() == QEvent.Type.Close:
            callbacks, self.callbacks = self.callbacks, []
            for cb in callbacks:
                cb()
            if callbacks:  # the widgets asked their workers to quit: let them finish
                from napari.qt.threading import WorkerBase

                try:  # a worker quits at its next yield (a long numba compile delays that)
                    WorkerBase.await_workers(msecs=30000)
                except RuntimeError:
                    pass
        return False


def on_viewer_close(viewer: napari.Viewer, callback) -> None:
    """Run ``callback()`` when the viewer's main window closes (widgets release Qt resources).

    Without a Qt window (``ViewerModel``-only tests) nothing is installed.
    """
    viewer = unwrap(viewer)
    try:
        window = viewer.window._qt_window
    except AttributeError:
        return
    watcher = window.findChild(_CloseWatcher, "napari_4dstem_ml_close_watcher")
    if watcher is None:
        watcher = _CloseWatcher(window)
        watcher.setObjectName("napari_4dstem_ml_close_watcher")
        window.installEventFilter(watcher)
        watcher.callbacks.append(lambda: drop_session(viewer))
    watcher.callbacks.insert(0, callback)


def warm_up_torch() -> None:
    """Import PyTorch and its optimiser machinery once, when the first dock that trains or
    predicts is built, so that the first Start does not hold the GIL for seconds (measured:
    0.5–2 s bursts in the training thread). Off the GUI thread — on the GUI thread the import
    froze the window for 7.6 s on a cold start — except where Triton is installed (CUDA
    builds of PyTorch): its own LLVM crashed the process in ``glDrawElements`` under software
    OpenGL (Mesa's llvmpipe) when a worker imported it mid-paint, so there it is imported here,
    before any worker starts."""
    import importlib.util
    import threading

    if "torch" in sys.modules:
        return
    if importlib.util.find_spec("triton") is not None:
        _import_torch()
    else:
        threading.Thread(target=_import_torch, name="torch warm-up", daemon=True).start()


def _import_torch() -> None:
    try:
        import torch

        torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    except Exception:  # a broken torch reports itself at Start, with its message
        pass
