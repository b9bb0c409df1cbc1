"""Train & reconstruct: train a cluster model against a label, watch it learn, apply it.

The widget gathers parameters and runs the core's training generator
(:func:`napari_4dstem_ml.training.loop.train`) in a worker; each preview updates the
"reconstruction" image layer (and, for the linear model, the learned detector mask in the
diffraction view) in place. Stop ends training cleanly after the current step, keeping the best
weights (a second Stop aborts the worker). Save writes an atomic checkpoint; Apply streams a
prediction of another data set, row tile by row tile.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .session import Session, compact_widget, error_reporter, guarded, on_viewer_close, session_for

if TYPE_CHECKING:
    import napari

MODEL_KINDS = ("linear", "conv4d")
#: default (epochs, learning rate, batch size) per model, as in the CLI's training job
DEFAULTS = {"linear": (100, 3e-2, 32), "conv4d": (20, 2e-3, 32)}


def reconstruction_name(dataset: str) -> str:
    return f"reconstruction: {dataset}"


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
):
    """Worker generator: registers the label if it is not on the scan grid, fits the
    preprocessor, then yields the core's training events.

    Yields ``("registered", Registration, reference name)`` when registering,
    ``("preprocessor", Preprocessor)``, then every training event.
    """
    from ..preprocess import Preprocessor
    from ..training.loop import train
    from ..workflow import TrainingJob

    label = np.asarray(label, np.float32)
    coverage = np.isfinite(label)
    if label.shape != dataset.scan_shape:
        from ..registration import register_label
        from ..workflow import reference_image

        ref, what = reference_image(dataset)
        reg = register_label(label, label_pixel_A, ref, dataset.calibration.scan_step_A)
        yield ("registered", reg, what)
        label, coverage = reg.image_on_scan_grid.astype(np.float32), reg.coverage_mask
    # the same model, preprocessing and training settings as the CLI / headless workflow
    job = TrainingJob(
        label="",
        output="",
        model=kind,
        cluster_size=cluster_size,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
    )
    model_cfg, pre_cfg, train_cfg = job.configs(dataset)
    train_cfg = replace(train_cfg, patience=None)
    pre = Preprocessor.fit(dataset, pre_cfg)
    yield ("preprocessor", pre)
    yield from train(
        dataset,
        label,
        model_cfg,
        train_config=train_cfg,
        preprocessor=pre,
        label_mask=coverage,
        cancel=cancel,
    )


def predict_job(model, preprocessor, dataset, scheduler: str = ""):
    """Worker generator: the core's streaming prediction, in this process or, with a
    ``scheduler`` address, on that Dask cluster (yields events with ``image``, ``rows_done``)."""
    from ..parallel import Compute, iter_predict, open_client

    with open_client(Compute(scheduler=scheduler.strip() or None)) as client:
        return (yield from iter_predict(model, preprocessor, dataset, client=client))


class TrainingWidget(QWidget):
    """Dock widget: data set, label, model and hyper-parameters; Start/Stop/Save/Apply."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session: Session = session_for(napari_viewer)
        self.worker = None
        self.cancel: threading.Event | None = None
        self.result = None  # TrainResult of the last run
        self.preprocessor = None
        self.history: list = []
        self.registration_report = ""
        self.apply_worker = None

        self.dataset_box = QComboBox()
        self.label_box = QComboBox()
        self.label_file_button = QPushButton("Label file…")
        self.kind_box = QComboBox()
        self.kind_box.addItems(list(MODEL_KINDS))
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
        form.addRow("4D data set", self.dataset_box)
        label_row = QHBoxLayout()
        label_row.addWidget(self.label_box, stretch=1)
        label_row.addWidget(self.label_file_button)
        form.addRow("label", label_row)
        form.addRow("model", self.kind_box)
        form.addRow("cluster size K", self.cluster)
        form.addRow("epochs", self.epochs)
        form.addRow("learning rate", self.lr)
        form.addRow("batch size", self.batch)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.stop_button)
        buttons.addWidget(self.save_button)
        apply_row = QHBoxLayout()
        apply_row.addWidget(self.apply_box, stretch=1)
        apply_row.addWidget(self.apply_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addLayout(apply_row)
        layout.addWidget(self.scheduler)
        layout.addWidget(self.readout)
        layout.addStretch(1)

        self.kind_box.currentTextChanged.connect(self._on_kind)
        self._on_kind(self.kind_box.currentText())
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        self.save_button.clicked.connect(self._on_save)
        self.apply_button.clicked.connect(lambda: self.apply(self.apply_box.currentText()))
        self.label_file_button.clicked.connect(self._on_label_file)
        self.session.datasets_changed.connect(self._refresh)
        napari_viewer.layers.events.inserted.connect(self._refresh)
        napari_viewer.layers.events.removed.connect(self._refresh)
        on_viewer_close(napari_viewer, self.teardown)
        compact_widget(self)
        self._refresh()

    def teardown(self) -> None:
        self._closed = True
        if self.cancel is not None:
            self.cancel.set()
        if self.worker is not None:
            self.worker.quit()
        self.session.datasets_changed.disconnect(self._refresh)

    def _on_kind(self, kind: str) -> None:
        epochs, lr, batch = DEFAULTS.get(kind, DEFAULTS["linear"])
        self.epochs.setValue(epochs)
        self.lr.setValue(lr)
        self.batch.setValue(batch)

    # -- choices -------------------------------------------------------------------
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
        labels = [
            layer.name
            for layer in self.viewer.layers
            if layer.__class__.__name__ == "Image"
            and layer.ndim == 2
            and not layer.rgb
            and not layer.name.startswith(("navigation:", "reconstruction:", "virtual "))
        ]
        cur = self.label_box.currentText()
        self.label_box.clear()
        self.label_box.addItems(labels)
        if cur in labels:
            self.label_box.setCurrentText(cur)

    def _on_label_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Label image")
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
        if getattr(lab, "pixel_size", None):
            kwargs["scale"] = (
                (lab.pixel_size,) * 2 if np.ndim(lab.pixel_size) == 0 else lab.pixel_size
            )
        layer = self.viewer.add_image(np.asarray(image), name=f"label: {Path(path).name}", **kwargs)
        layer.metadata["label"] = lab
        self.label_box.setCurrentText(layer.name)

    def chosen_label(self, dataset) -> tuple[np.ndarray, float | None]:
        """The chosen label image and its pixel size (Å; from the layer's scale).

        A label not on the scan grid is registered in the training worker (core
        ``register_label`` against a virtual ADF image, ``workflow.reference_image``).
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
        return data, pixel

    # -- training ------------------------------------------------------------------
    def start(self):
        """Start training on the chosen data set and label (returns the worker)."""
        name = self.dataset_box.currentText()
        if not name or name not in self.session.datasets:
            show_error("choose a 4D data set first")
            return None
        ds = self.session.datasets[name]
        self.registration_report = ""
        try:
            label, label_pixel = self.chosen_label(ds)
        except Exception as err:  # noqa: BLE001 - shown to the user
            show_error(str(err))
            return None
        self.cancel = threading.Event()
        self.history = []
        self.result = None
        self._training_name = name
        kind = self.kind_box.currentText()
        worker = create_worker(
            guarded(train_job),
            ds,
            label,
            kind,
            self.cluster.value(),
            self.epochs.value(),
            self.lr.value(),
            self.batch.value(),
            self.cancel,
            label_pixel,
            _progress={"desc": f"training {kind} on {name}"},
            _start_thread=False,
            _connect={"errored": error_reporter("training", self.readout.setText)},
        )
        worker.yielded.connect(self._on_event)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.start_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.readout.setText(f"training {kind} (K={self.cluster.value()}) on {name}…")
        worker.start()
        return worker

    def stop(self) -> None:
        """First press: stop after the current step (keeps the best weights); second: abort."""
        if self.worker is None:
            return
        if self.cancel is not None and not self.cancel.is_set():
            self.cancel.set()
            self.readout.setText(self.readout.text() + "\nstopping…")
        else:
            self.worker.quit()

    def _on_finished(self) -> None:
        self.worker = None
        self.start_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        have = self.result is not None
        self.save_button.setEnabled(have)
        self.apply_button.setEnabled(have)

    def _on_event(self, ev) -> None:
        from ..training import loop

        if getattr(self, "_closed", False):
            return
        if isinstance(ev, tuple) and ev[0] == "preprocessor":
            self.preprocessor = ev[1]
            return
        if isinstance(ev, tuple) and ev[0] == "registered":
            reg, what = ev[1], ev[2]
            p = reg.params
            self.registration_report = (
                f"label registered against {what}: scale {p.scale:.4g}, rotation "
                f"{p.rotation_deg:.2f}°, shift ({p.shift_yx[0]:.2f}, {p.shift_yx[1]:.2f}) "
                f"steps, r = {reg.score:+.3f}, covers {100 * reg.coverage:.0f} %"
            )
            self.readout.setText(self.registration_report)
            show_info(self.registration_report)
            self.session.show_scan_image(
                f"label on scan grid: {self._training_name}",
                reg.image_on_scan_grid,
                visible=False,
                scale=self.session.datasets[self._training_name].scale()[:2],
            )
            return
        if isinstance(ev, loop.PrepareEvent):
            self.readout.setText(f"{ev.stage}: {ev.done}/{ev.total} rows")
        elif isinstance(ev, loop.StepEvent):
            self.readout.setText(f"epoch {ev.epoch}, step {ev.step}: loss {ev.train_loss:.4g}")
        elif isinstance(ev, loop.EpochEvent):
            self.history.append(ev)
            m = ", ".join(f"{k} {v:.3g}" for k, v in ev.metrics.items())
            self.readout.setText(
                f"epoch {ev.epoch}: train {ev.train_loss:.4g}, val {ev.val_loss:.4g}"
                + (f" ({m})" if m else "")
                + (" *best*" if ev.is_best else "")
            )
        elif isinstance(ev, loop.PreviewEvent):
            layer = self.session.show_scan_image(
                reconstruction_name(self._training_name), np.asarray(ev.image, np.float32)
            )
            layer.metadata["step"] = ev.step
            self._show_masks(ev.masks)
        elif isinstance(ev, loop.DoneEvent):
            self.result = ev.result
            self.preprocessor = ev.result.preprocessor
            r = ev.result
            m = ", ".join(f"{k} {v:.3g}" for k, v in r.metrics.items())
            self.readout.setText(
                (self.registration_report + "\n" if self.registration_report else "")
                + f"done ({r.stopped}): {r.steps} steps in {r.elapsed_s:.1f} s, best epoch "
                f"{r.best_epoch}, val loss {r.best_val_loss:.4g}" + (f"; {m}" if m else "")
            )

    def _show_masks(self, masks: dict) -> None:
        """Linear model: the learned detector mask, placed on the diffraction view."""
        pre = self.preprocessor
        for key, value in (masks or {}).items():
            arr = np.asarray(value, np.float32)
            if key != "detector_mask" or pre is None:
                continue
            det_scale = np.asarray(self.session.datasets[self._training_name].scale()[2:])
            o = np.asarray(arr.shape, float)
            px = float(pre.output_pixel)
            scale = (px, px) if pre.grid_units != "pixels" else tuple(px * det_scale)
            centre_world = np.asarray(pre.centre) * det_scale
            translate = tuple(centre_world - (o - 1) / 2 * np.asarray(scale))
            self.session.show_detector_image(
                "learned detector mask",
                arr,
                colormap="twilight_shifted",
                scale=scale,
                translate=translate,
                opacity=0.6,
                blending="additive",
            )

    # -- save / apply ---------------------------------------------------------------
    def _on_save(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save model", "model.pt", "Model (*.pt)")
        if path:
            self.save(path)

    def save(self, path) -> Path | None:
        """Atomic checkpoint of the last trained model (core ``save_checkpoint``)."""
        from ..training.checkpoint import save_checkpoint

        r = self.result
        if r is None:
            show_error("train a model first")
            return None
        try:
            out = save_checkpoint(
                path,
                r.model,
                r.model_config,
                r.preprocessor,
                train_summary=r.train_summary,
                metrics=r.metrics,
                overwrite=True,  # the save dialog has asked before replacing a file
            )
        except Exception as err:  # noqa: BLE001 - shown to the user
            show_error(f"could not save the model to {path}: {err}")
            return None
        show_info(f"model saved to {out}")
        return out

    def apply(self, name: str):
        """Predict data set ``name`` with the trained model, streaming rows into a layer."""
        if self.result is None or name not in self.session.datasets:
            show_error("train a model and choose a loaded 4D data set to apply it to")
            return None
        ds = self.session.datasets[name]
        worker = create_worker(
            guarded(predict_job),
            self.result.model,
            self.result.preprocessor,
            ds,
            self.scheduler.text(),
            _progress={"desc": f"reconstructing {name}"},
            _start_thread=False,
            _connect={"errored": error_reporter(f"reconstruction of {name}", self.readout.setText)},
        )

        def on_event(ev, name=name):
            if getattr(self, "_closed", False):
                return
            layer = self.session.show_scan_image(
                reconstruction_name(name),
                np.nan_to_num(ev.image, nan=float(np.nanmean(ev.image)))
                if np.isfinite(ev.image).any()
                else np.zeros_like(ev.image),
                scale=ds.scale()[:2],
            )
            layer.metadata["rows_done"] = ev.rows_done

        def on_return(image, name=name):
            if getattr(self, "_closed", False):
                return
            layer = self.session.show_scan_image(
                reconstruction_name(name), image, scale=ds.scale()[:2]
            )
            layer.metadata["rows_done"] = ds.scan_shape[0]

        worker.yielded.connect(on_event)
        worker.returned.connect(on_return)
        worker.finished.connect(lambda: setattr(self, "apply_worker", None))
        self.apply_worker = worker
        worker.start()
        return worker
