"""Train & reconstruct: train a cluster model against a label, watch it learn, apply models.

The widget gathers parameters and runs the core's training generator
(:func:`napari_4dstem_ml.training.loop.train`) in a worker. Each run is named after its model
and data set ("conv4d #2 on MoS2 …") and keeps its own layers, updated in place: the
reconstruction (main viewer), and for the linear model the learned detector mask m(|k|) on the
diffraction plane (with its colorbar; the cluster weights w(|r|) are plotted in the dock), for
the 4D CNN its first-layer filters (beside the detector). The dock shows a determinate progress bar (epochs, steps,
time left) and the train/validation loss per epoch. The training and validation regions are the
rectangles of the "training regions" layer (:mod:`.regions`). The label is registered onto the
scan grid once per label and data set (cached in the session).

Models trained here or loaded from checkpoints (button, or dropping a ``.pt`` onto napari) are
listed with their description; Save writes the selected one (atomic checkpoint), Apply streams
its reconstruction of any loaded 4D data set. Stop ends training cleanly after the current step,
keeping the best weights (a second Stop aborts the worker).

Speed: the worker's events are only stored by the slots; the progress text is refreshed by a
2 Hz timer, the plots and layers once per epoch, and no indeterminate animation runs, so the
GUI thread (and software OpenGL) takes little time from training.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QWidget,
)
from superqt import QCollapsible

from ..workflow import TRAINING_DEFAULTS, TrainingJob, trust_line
from .dialogs import open_file, save_file
from .layout import scrolling_layout, settle
from .models import describe, load_model_file
from .naming import applied_name, registered_name
from .plots import LossCurves, WeightsPlot
from .ptycho import LabelReconstruction
from .regions import ensure_region_layers, region_layers, split_for
from .session import (
    DATASET_KEY,
    ROLE_KEY,
    RegisteredLabel,
    Session,
    SessionModel,
    compact_widget,
    error_reporter,
    fingerprint,
    guarded,
    layer_dataset,
    layer_role,
    on_viewer_close,
    session_for,
    warm_up_torch,
)

if TYPE_CHECKING:
    import napari

MODEL_KINDS = ("conv4d", "linear")
#: default (epochs, learning rate, batch size) per model and start: the CLI's training job's
DEFAULTS = {k: (int(v["epochs"]), v["lr"], int(v["batch_size"]))
            for k, v in TRAINING_DEFAULTS.items()}
#: the "start from" choices besides the session's saved models
START_BASE = "base model (fine-tune)"
START_SCRATCH = "scratch"
#: progress text refresh interval (ms): the only per-step GUI work
PROGRESS_MS = 500
#: layer-name prefixes of the learned views in the diffraction viewer
MASK_PREFIX = "m(|k|): "
FILTERS_PREFIX = "filters: "
#: roles never offered as the default training label
NOT_LABELS = ("ground_truth", "adf", "icom", "linear", "cnn", "uncertainty")




def train_job(
    dataset,
    label,
    kind: str,
    cluster_size: int,
    epochs: int,
    lr: float,
    batch_size: int,
    cancel,
    label_pixel_A: float | None = None,
    *,
    registered: RegisteredLabel | None = None,
    split=None,
    init: str = "scratch",
    ensemble: int | None = 1,
):
    """Worker generator: registers the label if it is not on the scan grid (unless
    ``registered`` gives it), prepares the job as the CLI does (``TrainingJob.prepare``: model,
    preprocessing and training configs; ``init`` "scratch", "base" or a checkpoint to fine-tune;
    ``ensemble`` members, ``None`` for the CLI's default), then yields the core's training
    events.

    Yields ``("registered", RegisteredLabel)`` when it registered the label,
    ``("preprocessor", Preprocessor)``, then every training event.
    """
    from ..preprocess import Preprocessor
    from ..training.loop import train

    label = np.asarray(label, np.float32)
    coverage = np.isfinite(label)
    if registered is not None:
        label, coverage = registered.image, registered.coverage
    elif label.shape != dataset.scan_shape:
        registered = register(dataset, label, label_pixel_A)
        yield ("registered", registered)
        label, coverage = registered.image, registered.coverage
    job = TrainingJob(
        label="",
        output="",
        model=kind,
        cluster_size=cluster_size,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        init=init,
        ensemble=ensemble,
    )
    initial, (model_cfg, pre_cfg, train_cfg) = job.prepare(dataset)
    if initial is None:
        pre = Preprocessor.fit(dataset, pre_cfg)
    else:
        pre = initial.preprocessor.adapt(dataset)
    yield ("preprocessor", pre)
    yield from train(
        dataset,
        label,
        model_cfg,
        pre_cfg,
        train_config=train_cfg,
        preprocessor=pre if initial is None else None,
        label_mask=coverage,
        split=split,
        cancel=cancel,
        init=initial,
        augment=job.augment_config(),
    )


def register(dataset, label: np.ndarray, label_pixel_A: float | None) -> RegisteredLabel:
    """The core's label registration onto the scan grid (against a virtual ADF image)."""
    from ..registration import register_label
    from ..workflow import reference_image

    ref, what = reference_image(dataset)
    reg = register_label(label, label_pixel_A, ref, dataset.calibration.scan_step_A)
    p = reg.params
    report = (
        f"label registered against {what}: scale {p.scale:.4g}, rotation "
        f"{p.rotation_deg:.2f}°, shift ({p.shift_yx[0]:.2f}, {p.shift_yx[1]:.2f}) "
        f"steps, r = {reg.score:+.3f}, covers {100 * reg.coverage:.0f} %"
    ) + "".join(f"\nwarning: {w}" for w in reg.warnings)
    return RegisteredLabel(
        image=reg.image_on_scan_grid.astype(np.float32),
        coverage=np.asarray(reg.coverage_mask, bool),
        report=report,
        params=p.to_dict(),
    )


def predict_job(entry, dataset, scheduler: str = ""):
    """Worker generator: the core's :class:`~napari_4dstem_ml.predict.Reconstructor` (a
    Message per domain issue, one with the pattern check's verdict, the prediction's events;
    returns the ReconstructionReport with the pattern distance map), in
    this process or, with a ``scheduler`` address, on that Dask cluster (the workers read the
    data and compute an ensemble's spread too)."""
    from ..parallel import Compute
    from ..predict import Reconstructor

    compute = Compute(scheduler=scheduler.strip()) if scheduler.strip() else None
    return (yield from Reconstructor(entry, dataset, compute=compute).run())


def format_duration(seconds: float) -> str:
    s = int(round(max(0.0, seconds)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class TrainingWidget(QWidget):
    """Dock widget: data set, label, regions, model and hyper-parameters; Start/Stop;
    progress and loss curves; the session's models with Load/Save/Apply."""

    TAB_TITLE = "Train"

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        warm_up_torch()
        self.viewer = napari_viewer
        self.session: Session = session_for(napari_viewer)
        self.worker = None
        self.cancel: threading.Event | None = None
        self.result = None  # TrainResult of the last run
        self.preprocessor = None
        self.history: list = []
        self.registration_report = ""
        self.apply_worker = None
        self.run_name: str | None = None
        self._label_chosen = False  # the user picked a label: keep it
        self._progress: dict = {}
        self._watched_regions: set[int] = set()

        self.dataset_box = QComboBox()
        self.label_box = QComboBox()
        self.label_file_button = QPushButton("Label file…")
        self.ptycho_button = QPushButton("Reconstruct label…")
        self.ptycho_button.setToolTip(
            "make the label from this data set by ptychography (extra [ptycho]): progress with "
            "an ETA, Stop to pause, the same settings resume; the label is offered for training "
            "on the scan grid, no registration needed")
        self.label_maker = LabelReconstruction(self)
        self.regions_button = QPushButton("Show regions")
        self.regions_button.setToolTip(
            "show the 'training region' and 'validation region' layers of the data set: move "
            "or resize their rectangles (select mode), or draw a new one in a region's own "
            "layer, to choose where to train and validate"
        )
        self.regions_label = QLabel("")
        self.regions_label.setWordWrap(True)
        self.kind_box = QComboBox()
        self.kind_box.addItems(list(MODEL_KINDS))
        self.start_box = QComboBox()
        self.start_box.setToolTip(
            "fine-tune the base model shipped with the plugin (trained on a simulated library of "
            "materials: transfers to samples unlike the label's), a saved model, or start from "
            "scratch")
        self.ensemble = QSpinBox()
        self.ensemble.setRange(1, 8)
        self.ensemble.setValue(3)
        self.ensemble.setToolTip("members of a deep ensemble: their spread is the uncertainty map")
        self.cluster = QSpinBox()
        self.cluster.setRange(1, 15)
        self.cluster.setSingleStep(2)
        self.cluster.setValue(5)
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 10000)
        self.epochs.setValue(20)
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(5)
        self.lr.setRange(1e-5, 1.0)
        self.lr.setSingleStep(1e-4)
        self.lr.setValue(1e-3)
        self.batch = QSpinBox()
        self.batch.setRange(1, 4096)
        self.batch.setValue(64)
        self.start_button = QPushButton("Start")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.progress.setFormat("idle")
        self.curves = LossCurves()
        self.weights_plot = WeightsPlot()
        self.weights_plot.setVisible(False)
        self.model_list = QListWidget()
        self.model_list.setMaximumHeight(64)
        self.model_info = QPlainTextEdit("no model yet: train one, or load a checkpoint (.pt)")
        self.model_info.setReadOnly(True)
        self.model_info.setMaximumHeight(96)
        self.load_button = QPushButton("Load model…")
        self.save_button = QPushButton("Save model…")
        self.save_button.setEnabled(False)
        self.apply_box = QComboBox()
        self.apply_button = QPushButton("Apply model")
        self.apply_button.setEnabled(False)
        self.scheduler = QLineEdit()
        self.scheduler.setPlaceholderText("Dask scheduler tcp://host:port (empty: this process)")
        self.readout = QLabel("")
        self.readout.setWordWrap(True)

        form = QFormLayout()
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)  # narrow docks
        form.addRow("4D data set", self.dataset_box)
        label_row = QHBoxLayout()
        label_row.addWidget(self.label_box, stretch=1)
        label_row.addWidget(self.label_file_button)
        form.addRow("label", label_row)
        form.addRow("", self.ptycho_button)
        form.addRow("regions", self.regions_button)
        form.addRow(self.regions_label)
        model_row = QHBoxLayout()
        model_row.addWidget(self.kind_box, stretch=2)
        model_row.addWidget(QLabel("from"))
        model_row.addWidget(self.start_box, stretch=3)
        form.addRow("model", model_row)
        # the hyper-parameters fold away (their values in the title): Start, the progress
        # and the loss curves stay in sight on a laptop screen
        self.settings_panel = QCollapsible("training settings")
        hyper = QWidget()
        grid = QGridLayout(hyper)
        grid.setContentsMargins(0, 0, 0, 0)
        for i, (text, box, tip) in enumerate((
                ("epochs", self.epochs, "training epochs"),
                ("lr", self.lr, "learning rate"),
                ("batch", self.batch, "batch size (clusters per step)"),
                ("K", self.cluster, "cluster size K × K scan positions"),
                ("members", self.ensemble, "ensemble members"))):
            label = QLabel(text)
            label.setToolTip(tip)
            box.setToolTip(tip)
            grid.addWidget(label, i // 2, 2 * (i % 2))
            grid.addWidget(box, i // 2, 2 * (i % 2) + 1)
        self.settings_panel.addWidget(hyper)
        # the title (the values) is clipped, never widens the dock
        self.settings_panel.toggleButton().setSizePolicy(QSizePolicy.Policy.Ignored,
                                                         QSizePolicy.Policy.Fixed)
        form.addRow(self.settings_panel)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.stop_button)
        model_buttons = QHBoxLayout()
        model_buttons.addWidget(self.load_button)
        model_buttons.addWidget(self.save_button)
        apply_row = QHBoxLayout()
        apply_row.addWidget(QLabel("apply to"))
        apply_row.addWidget(self.apply_box, stretch=1)
        apply_row.addWidget(self.apply_button)
        layout = scrolling_layout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.readout)
        plots = QHBoxLayout()
        plots.addWidget(self.curves, stretch=2)
        plots.addWidget(self.weights_plot, stretch=1)
        layout.addLayout(plots, stretch=1)
        layout.addWidget(QLabel("models"))
        layout.addWidget(self.model_list)
        layout.addWidget(self.model_info)
        layout.addLayout(model_buttons)
        layout.addLayout(apply_row)
        layout.addWidget(self.scheduler)

        self._timer = QTimer(self)
        self._timer.setInterval(PROGRESS_MS)
        self._timer.timeout.connect(self._show_progress)

        self._restoring = False
        self._fill_starts()
        self.kind_box.currentTextChanged.connect(self._on_kind)
        self.start_box.currentTextChanged.connect(lambda _: self._on_kind(self.kind_box.currentText()))
        self._on_kind(self.kind_box.currentText())
        settings = self.session.settings
        settings.bind("training", "model", self.kind_box)
        settings.bind("training", "cluster_size", self.cluster)
        for key, box in (("epochs", self.epochs), ("lr", self.lr), ("batch_size", self.batch)):
            box.valueChanged.connect(lambda v, key=key: self._store_hyper(key, v))
        for box in (self.epochs, self.lr, self.batch, self.cluster, self.ensemble):
            box.valueChanged.connect(self._show_settings_title)
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        self.save_button.clicked.connect(self._on_save)
        self.load_button.clicked.connect(self._on_load)
        self.apply_button.clicked.connect(self._on_apply)
        self.regions_button.clicked.connect(self.show_regions)
        self.label_file_button.clicked.connect(self._on_label_file)
        self.ptycho_button.clicked.connect(
            lambda: self.label_maker.stop() if self.label_maker.running else self.label_maker.start())
        # a label chosen by the user (or a script) is kept; a default one follows the layers
        # (the refresh below blocks this signal while it fills the box)
        self.label_box.currentTextChanged.connect(lambda _: setattr(self, "_label_chosen", True))
        self.dataset_box.currentTextChanged.connect(self._on_dataset_choice)
        self.model_list.currentTextChanged.connect(self._on_model_selected)
        self.session.datasets_changed.connect(self._refresh)
        self.session.models_changed.connect(self._refresh_models)
        napari_viewer.layers.events.inserted.connect(self._refresh)
        napari_viewer.layers.events.removed.connect(self._refresh)
        on_viewer_close(napari_viewer, self.teardown)
        compact_widget(self)
        settle(self)
        self._show_settings_title()
        self._refresh()
        self._refresh_models()

    def teardown(self) -> None:
        self._closed = True
        self._timer.stop()
        self.label_maker.teardown()
        if self.cancel is not None:
            self.cancel.set()
        if self.worker is not None:
            self.worker.quit()
        if self.apply_worker is not None:
            self.apply_worker.quit()
        self.session.datasets_changed.disconnect(self._refresh)
        self.session.models_changed.disconnect(self._refresh_models)

    # -- settings ------------------------------------------------------------------
    def _fill_starts(self) -> None:
        """Base model (when installed), scratch, and the session's saved models."""
        from ..base_model import base_model_path

        current = self.start_box.currentText()
        self.start_box.blockSignals(True)
        self.start_box.clear()
        kind = self.kind_box.currentText()
        if base_model_path(kind).is_file():
            self.start_box.addItem(START_BASE)
        self.start_box.addItem(START_SCRATCH)
        for entry in self.session.models.values():
            if entry.path and entry.kind == kind:
                self.start_box.addItem(f"fine-tune {entry.name}", entry.path)
        i = self.start_box.findText(current)
        self.start_box.setCurrentIndex(max(0, i))
        self.start_box.blockSignals(False)

    def _start_key(self) -> str:
        """The settings/defaults key of the chosen model and start."""
        kind = self.kind_box.currentText()
        return kind if self.start_box.currentText() == START_SCRATCH else f"{kind}.base"

    def init_choice(self) -> str:
        """``TrainingJob.init`` of the chosen start: "base", "scratch" or a checkpoint path."""
        text = self.start_box.currentText()
        if text == START_BASE:
            return "base"
        if text == START_SCRATCH or not text:
            return "scratch"
        return str(self.start_box.currentData())

    def _on_kind(self, kind: str) -> None:
        """Hyper-parameters of ``kind`` and its start: stored ones, else the CLI's defaults."""
        if self.sender() is self.kind_box:
            self._fill_starts()
        key = self._start_key()
        epochs, lr, batch = DEFAULTS.get(key, DEFAULTS["linear"])
        get = self.session.settings.get
        self._restoring = True
        try:
            self.epochs.setValue(int(get("training", f"{key}.epochs", epochs)))
            self.lr.setValue(float(get("training", f"{key}.lr", lr)))
            self.batch.setValue(int(get("training", f"{key}.batch_size", batch)))
            scratch = self.start_box.currentText() == START_SCRATCH
            self.ensemble.setEnabled(scratch)  # fine-tuning keeps the initial model's members
            self.cluster.setEnabled(scratch)  # ... and its cluster size K
            self.ensemble.setValue(3 if kind == "conv4d" else 1)
        finally:
            self._restoring = False

    def _show_settings_title(self, *_) -> None:
        """The folded hyper-parameters, in one line."""
        members = f", ×{self.ensemble.value()}" if self.ensemble.value() > 1 else ""
        self.settings_panel.setText(
            f"{self.epochs.value()} epoch{'s' if self.epochs.value() != 1 else ''}, "
            f"lr {self.lr.value():g}, batch {self.batch.value()}, "
            f"K {self.cluster.value()}{members}")
        self.settings_panel.setToolTip("training settings: epochs, learning rate, batch size, "
                                       "cluster size K, ensemble members")

    def _store_hyper(self, key: str, value) -> None:
        if not self._restoring:
            self.session.settings.set("training", f"{self._start_key()}.{key}", value)

    # -- choices -------------------------------------------------------------------
    def _label_candidates(self) -> list:
        return [
            layer
            for layer in self.viewer.layers
            if layer.__class__.__name__ == "Image"
            and layer.ndim == 2
            and not layer.rgb
            and not layer.name.startswith(("navigation:", "virtual ", "CoM", "iCoM"))
            and layer_role(layer) not in ("linear", "cnn", "uncertainty", "adf", "icom")
        ]

    def default_label(self, dataset: str) -> str | None:
        """The data set's own ptychographic label (never the ground truth): a layer whose
        role is "label" for ``dataset``, else any label layer, else any other candidate that
        is not a ground truth."""
        layers = self._label_candidates()
        for test in (
            lambda lay: layer_role(lay) == "label" and layer_dataset(lay) == dataset,
            lambda lay: layer_role(lay) == "label",
            lambda lay: layer_role(lay) not in NOT_LABELS
            and "ground truth" not in lay.name.lower(),
        ):
            found = [lay for lay in layers if test(lay)]
            if found:
                # the label on its own grid before one already put on the scan grid
                found.sort(key=lambda lay: " on scan grid: " in lay.name)
                return found[0].name
        return None

    def _refresh(self, *_) -> None:
        names = list(self.session.datasets)
        for box in (self.dataset_box, self.apply_box):
            cur = box.currentText() or self.session.current or ""
            box.blockSignals(True)
            box.clear()
            box.addItems(names)
            if cur in names:
                box.setCurrentText(cur)
            box.blockSignals(False)
        labels = [layer.name for layer in self._label_candidates()]
        cur = self.label_box.currentText()
        self.label_box.blockSignals(True)
        self.label_box.clear()
        self.label_box.addItems(labels)
        if cur in labels and self._label_chosen:
            self.label_box.setCurrentText(cur)
        else:
            default = self.default_label(self.dataset_box.currentText())
            if default is not None:
                self.label_box.setCurrentText(default)
        self.label_box.blockSignals(False)
        self._show_regions_text()

    def _on_dataset_choice(self, name: str) -> None:
        self._label_chosen = False
        self._refresh()

    def _show_regions_text(self) -> None:
        name = self.dataset_box.currentText()
        if name not in self.session.datasets:
            self.regions_label.setText("")
            return
        try:
            split = split_for(self.session, name)
            ds = self.session.datasets[name]
            tr, va = split.region_masks(ds.scan_shape)
            drawn = bool(region_layers(self.session, name))
            self.regions_label.setText(
                f"{'drawn' if drawn else 'default halves'}: train {int(tr.sum())}, validate "
                f"{int(va.sum())} positions"
            )
        except Exception as err:  # noqa: BLE001 - shown to the user
            self.regions_label.setText(f"regions: {err}")

    def show_regions(self) -> dict | None:
        """Show (create) the chosen data set's "training region" and "validation region"
        layers, the training one active in select mode (ready to move or resize); returns
        ``{"train": layer, "validation": layer}``."""
        name = self.dataset_box.currentText()
        if name not in self.session.datasets:
            show_error("choose a 4D data set first")
            return None
        if name != self.session.current:
            self.session.set_current(name)
        layers = ensure_region_layers(self.session, name, on_change=self._on_region_replaced)
        for layer in layers.values():
            layer.visible = True
            layer.mode = "select"
            if id(layer) not in self._watched_regions:
                self._watched_regions.add(id(layer))
                layer.events.data.connect(lambda *_: self._show_regions_text())
        self.viewer.layers.selection.active = layers["train"]
        self._show_regions_text()
        return layers

    def _on_region_replaced(self, region: str, text: str) -> None:
        self._show_regions_text()
        self.readout.setText(f"{text}; {self.regions_label.text()}")

    def _on_label_file(self) -> None:
        path = open_file(self, self.session, "Label image")
        if path:
            self.load_label_file(path)

    def load_label_file(self, path) -> None:
        """Load a label file through the core and add it as an image layer."""
        try:
            from ..registration import load_label

            lab = load_label(path)
        except Exception as err:  # noqa: BLE001 - shown to the user
            show_error(f"could not load label {Path(path).name}: {err}")
            return
        image = getattr(lab, "image", lab)
        kwargs = {}
        px = getattr(lab, "pixel_size_A", None) or getattr(lab, "pixel_size", None)
        if px:
            kwargs["scale"] = (px,) * 2 if np.ndim(px) == 0 else px
        layer = self.viewer.add_image(
            np.asarray(image),
            name=f"label: {Path(path).name}",
            metadata={
                ROLE_KEY: "label",
                DATASET_KEY: self.dataset_box.currentText() or None,
                "own_grid": True,
                **({"label_pixel_size_A": float(np.ravel(px)[0])} if px else {}),
            },
            **kwargs,
        )
        self._label_chosen = True
        self.label_box.setCurrentText(layer.name)

    def chosen_label(self, dataset) -> tuple[np.ndarray, float | None, str]:
        """The chosen label image, its pixel size (Å; from the layer's scale) and a cache key.

        A label not on the scan grid is registered in the training worker (core
        ``register_label`` against a virtual ADF image, ``workflow.reference_image``), once
        per label and data set.
        """
        name = self.label_box.currentText()
        if not name:
            raise ValueError("choose a label image layer (or load a label file)")
        layer = self.viewer.layers[name]
        data = np.asarray(layer.data, dtype=np.float32)
        pixel = layer.metadata.get("label_pixel_size_A") or float(layer.scale[-1])
        if data.shape != dataset.scan_shape and dataset.calibration.scan_step_A is None:
            raise ValueError(
                f"label {name!r} is {data.shape}, the scan is {dataset.scan_shape}: registering "
                "it needs the scan step of the data set, which is unknown"
            )
        return data, pixel, f"{fingerprint(data)}:{pixel:.6g}"

    # -- training ------------------------------------------------------------------
    def start(self):
        """Start training on the chosen data set, label and regions (returns the worker)."""
        if self.worker is not None:
            show_info("training is running: stop it first")
            return None
        name = self.dataset_box.currentText()
        if not name or name not in self.session.datasets:
            show_error("choose a 4D data set first")
            return None
        ds = self.session.datasets[name]
        self.registration_report = ""
        try:
            label, label_pixel, key = self.chosen_label(ds)
            split = split_for(self.session, name)
            split.positions(ds.scan_shape, self.cluster.value())  # fail early, clearly
        except Exception as err:  # noqa: BLE001 - shown to the user
            show_error(str(err))
            self.readout.setText(str(err))
            return None
        self._label_key = (key, name)
        self._label_method = self.viewer.layers[self.label_box.currentText()].metadata.get(
            "label_method")
        registered = self.session.registrations.get(self._label_key)
        if registered is not None:
            self.registration_report = registered.report + " (cached)"
        kind = self.kind_box.currentText()
        self.cancel = threading.Event()
        self.history = []
        self.result = None
        self.preprocessor = None
        self._training_name = name
        self.run_name = self.session.next_run_name(kind, name)
        self._kind = kind
        self.curves.clear_points()
        self.weights_plot.setVisible(kind == "linear")
        self._hide_other_learned_views()
        worker = create_worker(
            guarded(train_job),
            ds,
            label,
            kind,
            # fine-tuning keeps the initial model's K (the job's default means "not chosen")
            self.cluster.value() if self.start_box.currentText() == START_SCRATCH
            else TrainingJob.cluster_size,
            self.epochs.value(),
            self.lr.value(),
            self.batch.value(),
            self.cancel,
            label_pixel,
            registered=registered,
            split=split,
            init=self.init_choice(),
            ensemble=self.ensemble.value(),
            _start_thread=False,
            _connect={"errored": error_reporter("training", self.readout.setText)},
        )
        worker.yielded.connect(self._on_event)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.start_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self._progress = {"t0": time.perf_counter(), "text": "starting", "fraction": 0.0}
        self.readout.setText(
            (self.registration_report + "\n" if self.registration_report else "")
            + f"training {self.run_name} (K={self.cluster.value()})…"
        )
        self._show_progress()
        self._timer.start()
        worker.start()
        return worker

    def stop(self) -> None:
        """First press: stop after the current step (keeps the best weights); second: abort."""
        if self.worker is None:
            return
        if self.cancel is not None and not self.cancel.is_set():
            self.cancel.set()
            self._progress["text"] = "stopping after this step…"
            self._show_progress()
        else:
            self.worker.quit()

    def _on_finished(self) -> None:
        # done once the run's last preview and learned views are shown
        self.session.after_deferred(self._done)

    def _done(self) -> None:
        self.worker = None
        self._timer.stop()
        self.start_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        self._show_progress(final=True)

    def _show_progress(self, final: bool = False) -> None:
        """Refresh the progress bar from the latest stored state (timer, 2 Hz)."""
        p = self._progress
        if not p:
            return
        if final:
            r = self.result
            self.progress.setValue(1000 if r is not None else self.progress.value())
            self.progress.setFormat(
                f"done in {format_duration(r.elapsed_s)}" if r is not None
                else "stopped"
            )
            return
        text = p.get("text", "")
        if p.get("eta") is not None:
            text += f" · {format_duration(p['eta'])} left"
        else:
            text += f" · {format_duration(time.perf_counter() - p['t0'])}"
        # the text first (a deferred repaint), then the value (QProgressBar repaints at once):
        # one repaint of the window, not two
        self.progress.setFormat(text)
        self.progress.setValue(int(1000 * min(1.0, p.get("fraction", 0.0))))

    def _on_event(self, ev) -> None:
        """Worker events, on the GUI thread: store progress (shown by the timer); layers and
        plots change once per epoch."""
        from ..training import loop

        if getattr(self, "_closed", False):
            return
        p = self._progress
        if isinstance(ev, loop.StepEvent):  # the frequent one: keep it cheap
            epochs = self.epochs.value()
            total = ev.total_steps or 0
            if "t_first_step" not in p:
                p["t_first_step"], p["step0"] = time.perf_counter() - 1e-9, ev.step - 1
            done = ev.step - p["step0"]
            p["text"] = f"epoch {ev.number}/{epochs} · step {ev.step}/{total or '?'}"
            if total:
                p["fraction"] = ev.step / total
                rate = (time.perf_counter() - p["t_first_step"]) / max(done, 1)
                p["eta"] = rate * max(total - ev.step, 0)
            return
        if isinstance(ev, tuple) and ev[0] == "preprocessor":
            self.preprocessor = ev[1]
            return
        if isinstance(ev, tuple) and ev[0] == "registered":
            reg = ev[1]
            self.session.registrations[self._label_key] = reg
            self.registration_report = reg.report
            self.readout.setText(reg.report)
            (show_warning if "\nwarning: " in reg.report else show_info)(reg.report)
            self.session.show_scan_image(
                registered_name(self._training_name, self._label_method),
                reg.image,
                dataset=self._training_name,
                role="label",
                metadata={"label_method": self._label_method} if self._label_method else None,
                visible=False,
            )
            return
        if isinstance(ev, loop.PrepareEvent):
            p["text"] = f"{ev.stage}: {ev.done}/{ev.total}"
            p["fraction"] = 0.0
            return
        if hasattr(ev, "text") and not isinstance(ev, tuple):  # a core message (hook)
            self.readout.setText(str(ev.text))
            show_info(str(ev.text))
            return
        if isinstance(ev, loop.EpochEvent):
            self.history.append(ev)
            self.curves.add_epoch(ev.number, ev.train_loss, ev.val_loss)
            m = ", ".join(f"{k} {v:.3g}" for k, v in ev.metrics.items())
            self.readout.setText(
                f"{self.run_name}\nepoch {ev.number}: train {ev.train_loss:.4g}, "
                f"val {ev.val_loss:.4g}" + (f" ({m})" if m else "") + (" *best*" if ev.is_best else "")
            )
        elif isinstance(ev, loop.PreviewEvent):
            # the layers change on later event-loop turns, one per turn, the latest preview
            # only (a new layer costs napari and software OpenGL a lot)
            run, dataset, kind = self.run_name, self._training_name, self._kind
            image = np.asarray(ev.image, np.float32)

            def preview():
                layer = self.session.show_scan_image(
                    run, image, dataset=dataset,
                    role="linear" if kind == "linear" else "cnn",
                    metadata={"step": ev.step, "model": run},
                )
                self._keep_on_top(layer)

            self.session.defer(("scan", run), preview)
            self.session.defer(("learned", run), lambda masks=ev.masks: self._show_learned(masks))
            unc = getattr(ev, "uncertainty", None)  # hook: an uncertainty map, when given
            if unc is not None:
                self.session.defer(("scan", f"uncertainty: {run}"), lambda: (
                    self.session.show_scan_image(
                        f"uncertainty: {run}", np.asarray(unc, np.float32), dataset=dataset,
                        role="uncertainty", visible=False, colormap="magma")))
        elif isinstance(ev, loop.DoneEvent):
            self._on_done(ev.result)

    def _on_done(self, r) -> None:
        from .models import model_kind

        self.result = r
        self.preprocessor = r.preprocessor
        m = ", ".join(f"{k} {v:.3g}" for k, v in r.metrics.items())
        trust = trust_line(r.train_summary)
        self.readout.setText(
            (self.registration_report + "\n" if self.registration_report else "")
            + f"{self.run_name} done: {r.how_it_ended()}"
            + (f", {r.steps} steps" if r.steps else "") + f" in {r.elapsed_s:.1f} s; "
            f"val loss {r.best_val_loss:.4g}" + (f", {m}" if m else "")
            + (f"\n{trust}" if trust else "")
        )
        summary = dict(r.train_summary)
        summary.setdefault("source", self._training_name)
        entry = SessionModel(
            name=self.run_name,
            kind=model_kind(r.model_config),
            model=r.model,
            model_config=r.model_config,
            preprocessor=r.preprocessor,
            info={"train_summary": summary, "metrics": dict(r.metrics)},
        )
        name = self.session.add_model(entry)
        self.select_model(name)

    def _keep_on_top(self, layer) -> None:
        layers = self.viewer.layers
        if "scan position" in layers:
            layers.move(layers.index("scan position"), len(layers))
        for region in region_layers(self.session, self._training_name).values():
            if layers.index(region) < layers.index(layer):
                layers.move(layers.index(region), len(layers))

    def _hide_other_learned_views(self) -> None:
        """A new run: other runs' learned masks / filters leave the diffraction view."""
        for layer in self.session.diffraction.layers:
            if layer.name.startswith((MASK_PREFIX, FILTERS_PREFIX)):
                layer.visible = False

    def _show_learned(self, masks: dict) -> None:
        """The run's learned views: linear → m(|k|) on the diffraction plane (with colorbar)
        and w(|r|) in the dock; 4D CNN → its first-layer filters."""
        pre = self.preprocessor
        masks = masks or {}
        if "cluster_weights" in masks:
            self.weights_plot.set_weights(np.asarray(masks["cluster_weights"]))
        if pre is None:
            return
        ds = self.session.datasets[self._training_name]
        det_scale = np.asarray(ds.scale()[2:], float)
        gp = getattr(pre, "grid_pixel_mrad", None)
        if pre.grid_units == "pixels" or gp is None or ds.calibration.detector_pixel_mrad is None:
            grid_scale = float(pre.output_pixel) * det_scale  # model pixels in detector pixels
        else:
            grid_scale = np.array((gp, gp))
        centre_world = np.asarray(pre.centre, float) * det_scale
        if "detector_mask" in masks:
            arr = np.asarray(masks["detector_mask"], np.float32)
            o = np.asarray(arr.shape, float)
            translate = tuple(centre_world - (o - 1) / 2 * grid_scale)
            lim = float(np.nanmax(np.abs(arr))) or 1.0
            layer = self.session.show_detector_image(
                MASK_PREFIX + self.run_name,
                arr,
                colormap="PiYG",
                contrast_limits=(-lim, lim),
                scale=tuple(grid_scale),
                translate=translate,
                opacity=0.7,
            )
            layer.colorbar.visible = True
            # top left: the scale bar holds the bottom right, and on a 1366 × 768 screen the
            # diffraction view is too short for both on the right
            layer.colorbar.position = "top_left"
            layer.metadata["model"] = self.run_name
        if "first_layer_filters" in masks:
            arr = np.asarray(masks["first_layer_filters"], np.float32)
            # drawn beside the detector, half its height
            ky, kx = ds.detector_shape
            s = 0.5 * ky * det_scale[0] / arr.shape[0]
            translate = (0.0, kx * det_scale[1] + 2 * s)
            lim = float(np.nanmax(np.abs(arr))) or 1.0
            name = FILTERS_PREFIX + self.run_name
            new = name not in self.session.diffraction.layers
            layer = self.session.show_detector_image(
                name,
                arr,
                colormap="PiYG",
                contrast_limits=(-lim, lim),
                scale=(s, s),
                translate=translate,
            )
            layer.metadata["model"] = self.run_name
            if new:  # bring the filters into view once
                self.session.diffraction.reset_view()

    # -- models: list, load, save, apply ------------------------------------------------
    def _refresh_models(self) -> None:
        cur = self.model_list.currentItem().text() if self.model_list.currentItem() else None
        self.model_list.blockSignals(True)
        self.model_list.clear()
        names = list(self.session.models)
        self.model_list.addItems(names)
        self.model_list.blockSignals(False)
        if cur in names:
            self.select_model(cur)
        elif names:
            self.select_model(names[-1])
        have = bool(names)
        self.save_button.setEnabled(have)
        self.apply_button.setEnabled(have)
        self._fill_starts()  # saved models can be fine-tuned

    def select_model(self, name: str) -> None:
        items = self.model_list.findItems(name, self.model_list_match())
        if items:
            self.model_list.setCurrentItem(items[0])
        self._on_model_selected(name)

    @staticmethod
    def model_list_match():
        from qtpy.QtCore import Qt

        return Qt.MatchFlag.MatchExactly

    def selected_model(self) -> SessionModel | None:
        item = self.model_list.currentItem()
        return self.session.models.get(item.text()) if item is not None else None

    def _on_model_selected(self, name: str) -> None:
        entry = self.session.models.get(name)
        self.model_info.setPlainText(describe(entry) if entry is not None else "")

    def _on_load(self) -> None:
        path = open_file(self, self.session, "Load model", "Model (*.pt)")
        if path:
            self.load_model(path)

    def load_model(self, path) -> SessionModel | None:
        """Load a checkpoint into the session's models (selected, ready to apply)."""
        try:
            entry = load_model_file(self.session, path)
        except Exception as err:  # noqa: BLE001 - shown to the user
            show_error(f"could not load model {Path(path).name}: {err}")
            return None
        self.select_model(entry.name)
        show_info(f"model loaded: {entry.name}")
        return entry

    def _on_save(self) -> None:
        entry = self.selected_model()
        if entry is None:
            show_error("train or load a model first")
            return
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in entry.name).strip("_")
        path = save_file(self, self.session, "Save model", f"{stem or entry.kind}.pt",
                         "Model (*.pt)")
        if path:
            self.save(path, entry.name, overwrite=True)  # the dialog asked before replacing

    def save(self, path, model: str | None = None, overwrite: bool = False) -> Path | None:
        """Atomic checkpoint of model ``model`` (default: the selected one); an existing file
        is replaced only with ``overwrite``."""
        from ..training.checkpoint import save_checkpoint

        entry = self.session.models.get(model) if model else self.selected_model()
        if entry is None:
            show_error("train or load a model first")
            return None
        info = entry.info or {}
        try:
            out = save_checkpoint(
                path,
                entry.model,
                entry.model_config,
                entry.preprocessor,
                train_summary=info.get("train_summary"),
                metrics=info.get("metrics"),
                provenance=info.get("provenance"),
                overwrite=overwrite,  # True from the dialog, which asked before replacing
            )
        except Exception as err:  # noqa: BLE001 - shown to the user
            show_error(f"could not save the model to {path}: {err}")
            return None
        from .models import mark_saved

        mark_saved(entry, out)  # reopening this file selects this model, not a copy of it
        self._fill_starts()
        show_info(f"model saved to {out}")
        return out

    def _on_apply(self) -> None:
        entry = self.selected_model()
        self.apply(self.apply_box.currentText(), entry.name if entry else None)

    def apply(self, name: str, model: str | None = None):
        """Reconstruct data set ``name`` with model ``model`` (default: the selected one),
        streaming rows into the layer "<model> → <data set>"."""
        entry = self.session.models.get(model) if model else self.selected_model()
        if entry is None or name not in self.session.datasets:
            show_error("choose a model and a loaded 4D data set to apply it to")
            return None
        if self.apply_worker is not None:
            show_info("a reconstruction is running: wait for it to finish")
            return None
        ds = self.session.datasets[name]
        if name != self.session.current:  # the result is shown with its data set's layers
            self.session.set_current(name)
        layer_name = applied_name(entry.name, name)
        worker = create_worker(
            guarded(predict_job),
            entry,
            ds,
            self.scheduler.text(),
            _start_thread=False,
            _connect={"errored": error_reporter(f"reconstruction of {name}", self.readout.setText)},
        )
        meta = {"model": entry.name}

        def on_event(ev, name=name):
            if getattr(self, "_closed", False):
                return
            if hasattr(ev, "text"):  # the domain and pattern checks
                if getattr(ev, "level", "warning") == "info":  # a quiet note
                    meta.setdefault("notes", []).append(ev.text)
                    return
                show_warning(f"{entry.name} on {name}: {ev.text}")
                meta.setdefault("domain_warnings", []).append(ev.text)
                return
            # drawn on a later event-loop turn, only the latest rows (coalesced)
            self.session.defer(("scan", layer_name), lambda ev=ev: show_rows(ev))

        def show_rows(ev):
            image = ev.image
            filled = (
                np.nan_to_num(image, nan=float(np.nanmean(image)))
                if np.isfinite(image).any()
                else np.zeros_like(image)
            )
            self.session.show_scan_image(
                layer_name, filled, dataset=name, role=entry.role,
                metadata={**meta, "rows_done": ev.rows_done},
            )
            unc = getattr(ev, "uncertainty", None)  # an ensemble's spread (label units)
            if unc is not None and np.isfinite(unc).any():
                self.session.show_scan_image(
                    f"uncertainty: {layer_name}",
                    np.nan_to_num(unc, nan=float(np.nanmean(unc))),
                    dataset=name, role="uncertainty", colormap="magma", visible=False,
                    metadata={**meta, "rows_done": ev.rows_done},
                )
            self.progress.setFormat(f"{layer_name}: {ev.rows_done}/{ev.rows_total} rows")
            self.progress.setValue(int(1000 * ev.rows_done / max(ev.rows_total, 1)))

        def on_return(report, name=name):
            if getattr(self, "_closed", False):
                return
            self.session._deferred.pop(("scan", layer_name), None)  # the final image wins
            info = report.metadata()
            self.session.show_scan_image(
                layer_name, report.image, dataset=name, role=entry.role,
                metadata={**meta, **info, "rows_done": ds.scan_shape[0]},
            )
            if report.uncertainty is not None:
                self.session.show_scan_image(
                    f"uncertainty: {layer_name}", report.uncertainty, dataset=name,
                    role="uncertainty", colormap="magma", visible=False,
                    metadata={**meta, **info, "rows_done": ds.scan_shape[0]},
                )
            verdict = getattr(report, "pattern", None)
            if verdict is not None:  # the pattern check's distance map beside the image
                self.session.show_scan_image(
                    f"pattern distance: {layer_name}", np.nan_to_num(verdict.distance),
                    dataset=name, role="pattern_distance", colormap="inferno",
                    visible=bool(verdict.fired), metadata={**meta, **info},
                )
            note = (f"; outside the training domain in {len(report.issues)} respect(s): "
                    + "; ".join(i.message() for i in report.issues)) if report.issues else \
                "; inside the model's training domain"
            if verdict is not None:
                note += f"; {verdict.message}"
            self.readout.setText(f"reconstructed {name} with {entry.name}{note}")

        worker.yielded.connect(on_event)
        worker.returned.connect(on_return)
        def on_finished():  # done once the last rows are shown
            self.session.after_deferred(lambda: setattr(self, "apply_worker", None))

        worker.finished.connect(on_finished)
        self.apply_worker = worker
        worker.start()
        return worker
