"""Compare: every method's image of one data set side by side, with a metrics table.

One click gathers the scan-plane layers of the chosen data set by their role
(``layer.metadata["role"]``: ADF, iCoM, linear model, 4D CNN, label, ground truth, uncertainty
— the latest layer of each role), shows them in napari's grid (one camera: linked zoom and
pan; each panel labelled with its layer name) and fills the table with the core's
:func:`~napari_4dstem_ml.comparison.compare_methods` against the ground truth (else the label)
over the validation region (the "training regions" layer, or the lower half). The table is
exported as CSV and, with the images, as a PNG figure (both from the core). A label that is
not on the scan grid yet is registered first (once per label and data set, as for training).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from ..comparison import ROLE_TITLES, ROLES, MethodImage
from .dialogs import save_file
from .layout import scrolling_layout, settle
from .naming import label_title, registered_name
from .regions import validation_rect
from .session import (
    Session,
    camera,
    compact_widget,
    error_reporter,
    fingerprint,
    guarded,
    layer_dataset,
    layer_role,
    on_viewer_close,
    session_for,
)

if TYPE_CHECKING:
    import napari

REGION_CHOICES = ("validation region", "whole scan")
HEADER = ("method", "role", "Pearson r", "SSIM", "PSNR (dB)", "FRC")


def method_image(layer) -> MethodImage:
    """A scan-plane layer as the core's :class:`MethodImage` (a ground truth with the references
    blurred before sampling that a simulated sample puts in its metadata)."""
    return MethodImage(layer.name, layer_role(layer), np.asarray(layer.data),
                       references=layer.metadata.get("references"))


def compare_job(images, reference, region, pixel_size, unit, to_register=None, baselines=None):
    """Worker generator: computes the classical baselines when ``baselines`` = (data set,
    missing roles) asks (yields ``("baselines", Baselines)``: iCoM and the ADF annulus the
    detector reaches are shown beside every ML result), registers a label first when asked
    (yields ``("registered", key, RegisteredLabel)``), then returns the core's comparison
    table."""
    from ..comparison import MethodImage, compare_methods

    images = list(images)
    if baselines is not None:
        from ..baselines import classical_baselines

        dataset, missing = baselines
        base = classical_baselines(dataset)
        yield ("baselines", base)
        for role, img in (("adf", base.adf), ("icom", base.icom)):
            if role in missing and img is not None:  # no ADF where the detector holds no ring
                images.append(MethodImage(f"{'ADF' if role == 'adf' else 'iCoM'} (baseline)", role, img))
    if to_register is not None:
        from .training import register

        key, dataset, label, pixel, name = to_register
        reg = register(dataset, label, pixel)
        yield ("registered", key, reg)
        images.append(MethodImage(name, "label", reg.image))
    return compare_methods(images, reference, region, pixel_size=pixel_size, unit=unit)


class CompareWidget(QWidget):
    """Dock widget: data set, region; Compare builds the grid and the metrics table."""

    TAB_TITLE = "Compare"

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session: Session = session_for(napari_viewer)
        self.worker = None
        self.table_result = None  # the core's ComparisonTable of the last comparison
        self.images: list[MethodImage] = []
        self.compared_layers: list = []
        self._saved_visibility: dict[str, bool] | None = None
        self._saved_order: list[str] | None = None
        self._label_methods: dict[str, str | None] = {}

        self.dataset_box = QComboBox()
        self.region_box = QComboBox()
        self.region_box.addItems(list(REGION_CHOICES))
        self.compare_button = QPushButton("Compare")
        self.grid_button = QPushButton("Exit grid")
        self.grid_button.setEnabled(False)
        self.csv_button = QPushButton("Save table (CSV)…")
        self.png_button = QPushButton("Save figure (PNG)…")
        for b in (self.csv_button, self.png_button):
            b.setEnabled(False)
        self.table = QTableWidget(0, len(HEADER))
        self.table.setHorizontalHeaderLabels(list(HEADER))
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)  # long names: elided
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.status = QLabel("open a data set, compute ADF/iCoM, train or apply models, then Compare")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("data set", self.dataset_box)
        form.addRow("metrics over", self.region_box)
        buttons = QHBoxLayout()
        buttons.addWidget(self.compare_button)
        buttons.addWidget(self.grid_button)
        export = QHBoxLayout()
        export.addWidget(self.csv_button)
        export.addWidget(self.png_button)
        layout = scrolling_layout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.table, stretch=1)
        layout.addLayout(export)
        layout.addWidget(self.status)

        self.compare_button.clicked.connect(self.compare)
        self.grid_button.clicked.connect(self.exit_grid)
        self.csv_button.clicked.connect(self._on_csv)
        self.png_button.clicked.connect(self._on_png)
        self.session.datasets_changed.connect(self._refresh)
        self.session.dataset_changed.connect(self._on_current)
        self.session.settings.bind("compare", "region", self.region_box)
        on_viewer_close(napari_viewer, self.teardown)
        compact_widget(self)
        self.setMaximumWidth(720)
        settle(self)
        self._refresh()

    def teardown(self) -> None:
        self._closed = True
        if self.worker is not None:
            self.worker.quit()
        self.session.datasets_changed.disconnect(self._refresh)
        self.session.dataset_changed.disconnect(self._on_current)

    def _refresh(self, *_) -> None:
        names = list(self.session.datasets)
        cur = self.dataset_box.currentText() or self.session.current or ""
        self.dataset_box.blockSignals(True)
        self.dataset_box.clear()
        self.dataset_box.addItems(names)
        if cur in names:
            self.dataset_box.setCurrentText(cur)
        self.dataset_box.blockSignals(False)

    def _on_current(self, name: str) -> None:
        self.dataset_box.setCurrentText(name)

    # -- gathering -------------------------------------------------------------------
    def method_layers(self, dataset: str) -> list:
        """The latest scan-grid layer of each role for ``dataset``, in :data:`ROLES` order."""
        ds = self.session.datasets[dataset]
        latest = {}
        for layer in self.viewer.layers:
            role = layer_role(layer)
            if (
                role in ROLES
                and layer_dataset(layer) == dataset
                and layer.__class__.__name__ == "Image"
                and tuple(layer.data.shape) == tuple(ds.scan_shape)
            ):
                latest[role] = layer
        return [latest[r] for r in ROLES if r in latest]

    def _label_to_register(self, dataset: str, have_roles: set):
        """A label of ``dataset`` on its own grid that has no scan-grid version yet:
        (cache key, data set, image, pixel size, name), or ``None``."""
        if "label" in have_roles:
            return None
        ds = self.session.datasets[dataset]
        for layer in reversed(list(self.viewer.layers)):
            if layer_role(layer) == "label" and layer_dataset(layer) == dataset:
                data = np.asarray(layer.data, np.float32)
                if data.ndim != 2 or ds.calibration.scan_step_A is None:
                    continue
                pixel = layer.metadata.get("label_pixel_size_A") or float(layer.scale[-1])
                key = (f"{fingerprint(data)}:{pixel:.6g}", dataset)
                method = layer.metadata.get("label_method")
                self._label_methods[dataset] = method
                return key, ds, data, pixel, registered_name(dataset, method)
        return None

    def kind_of(self, name: str, role: str) -> str:
        """What an image is, for the table and the status line: a label says its kind
        ("label (ptychography)", "label (low-passed potential)", …)."""
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        if role == "label":
            method = layer.metadata.get("label_method") if layer is not None else None
            return label_title(method)
        return ROLE_TITLES.get(role, role)

    # -- comparing -------------------------------------------------------------------
    def compare(self):
        """Gather the data set's images, score them (worker), then show grid and table."""
        name = self.dataset_box.currentText()
        if name not in self.session.datasets:
            show_error("choose a 4D data set first")
            return None
        if self.worker is not None:
            return self.worker
        ds = self.session.datasets[name]
        layers = self.method_layers(name)
        roles = {layer_role(layer) for layer in layers}
        to_register = self._label_to_register(name, roles)
        if to_register is not None and to_register[0] in self.session.registrations:
            reg = self.session.registrations[to_register[0]]
            method = self._label_methods.get(name)
            layers.append(
                self.session.show_scan_image(
                    registered_name(name, method), reg.image, dataset=name, role="label",
                    metadata={"label_method": method} if method else None,
                )
            )
            to_register = None
        images = [method_image(layer) for layer in layers]
        missing = {"adf", "icom"} - roles
        baselines = (ds, missing) if missing else None
        self._missing = missing
        from ..comparison import choose_reference

        reference = choose_reference(images)
        if reference is None and to_register is None:
            show_error(f"{name}: no ground truth and no label to compare against")
            return None
        region = (
            validation_rect(self.session, name)
            if self.region_box.currentText() == "validation region"
            else (0, ds.scan_shape[0], 0, ds.scan_shape[1])
        )
        step = ds.calibration.scan_step_A
        pixel, unit = (float(step[1]), "Å") if step else (1.0, "px")
        worker = create_worker(
            guarded(compare_job),
            images,
            reference,
            region,
            pixel,
            unit,
            to_register,
            baselines,
            _start_thread=False,
            _connect={"errored": error_reporter("comparison", self.status.setText)},
        )
        self._dataset = name
        worker.yielded.connect(self._on_registered)
        worker.returned.connect(self._on_table)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.status.setText(
            "registering the label, then comparing…" if to_register else "comparing…"
        )
        worker.start()
        return worker

    def _on_finished(self) -> None:
        # done once the grid and the baselines are shown (one update per event-loop turn)
        self.session.after_deferred(lambda: setattr(self, "worker", None))

    def _on_registered(self, item) -> None:
        if getattr(self, "_closed", False):
            return
        if item[0] == "baselines":
            base = item[1]
            for note in getattr(base, "notes", ()):
                show_info(f"{self._dataset}: {note}")
            for role, title, img in (("adf", "ADF", base.adf), ("icom", "iCoM", base.icom)):
                if img is None or role not in getattr(self, "_missing", {role}):
                    continue
                self.session.show_scan_image(f"{title} (baseline): {self._dataset}", img,
                                             dataset=self._dataset, role=role,
                                             metadata={"baseline": base.info})
            return
        _, key, reg = item
        self.session.registrations[key] = reg
        method = self._label_methods.get(key[1])
        self.session.show_scan_image(
            registered_name(key[1], method), reg.image, dataset=key[1], role="label",
            visible=False, metadata={"label_method": method} if method else None,
        )

    def _on_table(self, table) -> None:
        if getattr(self, "_closed", False):
            return
        self.table_result = table
        layers = self.method_layers(self._dataset)
        self.images = [method_image(layer) for layer in layers]
        self.fill_table(table)
        self.show_grid(layers)
        y0, y1, x0, x1 = table.region
        kind = self.kind_of(table.reference, table.reference_role)
        self.status.setText(
            f"against {table.reference} ({kind}) over rows {y0}–{y1 - 1}, columns "
            f"{x0}–{x1 - 1}; FRC in {table.unit}"
        )
        for b in (self.csv_button, self.png_button):
            b.setEnabled(True)

    def fill_table(self, table) -> None:
        rows = table.formatted()
        headers, tips = table.headers(), table.header_tooltips()
        self.table.setColumnCount(len(headers))
        self.table.setHorizontalHeaderLabels(headers)
        for j, tip in enumerate(tips):
            if tip and self.table.horizontalHeaderItem(j) is not None:
                self.table.horizontalHeaderItem(j).setToolTip(tip)
        self.table.setRowCount(len(rows))
        for i, (row, score) in enumerate(zip(rows, table.rows)):
            row = (row[0], self.kind_of(score.name, score.role), *row[2:])
            for j, text in enumerate(row):
                item = QTableWidgetItem(text)
                if j == 0:
                    item.setToolTip(text)
                self.table.setItem(i, j, item)

    # -- grid ---------------------------------------------------------------------------
    def show_grid(self, layers: list) -> None:
        """Only ``layers`` visible, in role order (first = top left), in napari's grid, each
        panel labelled with its layer name. Done in steps on successive event-loop turns
        (:meth:`Session.defer`): each redraws the window once, so none holds the GUI long."""
        viewer = self.viewer
        self.compared_layers = list(layers)

        def hide_others():
            # the state to restore, taken after the visibility changes queued before
            if self._saved_visibility is None:
                self._saved_visibility = {layer.name: layer.visible for layer in viewer.layers}
                self._saved_order = [layer.name for layer in viewer.layers]
            for layer in viewer.layers:
                if layer not in layers:
                    layer.visible = False

        def order():
            # napari's grid fills cells in layer-list order: the compared layers first
            viewer.layers.move_multiple([viewer.layers.index(layer) for layer in layers], 0)

        def show(layer):
            if layer in viewer.layers:
                layer.visible = True
                layer.name_overlay.visible = True

        def grid_on():
            grid = viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid
            grid.stride = 1
            grid.spacing = 0.04
            grid.enabled = True
            self.fit_grid()
            self.grid_button.setEnabled(True)

        steps = [hide_others, order, *(lambda lay=lay: show(lay) for lay in layers), grid_on]
        for i, step in enumerate(steps):
            self.session.defer(("compare grid", i), step)

    def fit_grid(self) -> None:
        """Fit the compared images (not every layer's extent: a label on its own, larger
        grid would shrink them) into one grid cell."""
        viewer = self.viewer
        if not self.compared_layers:
            return
        lo = np.min([layer.extent.world[0][-2:] for layer in self.compared_layers], axis=0)
        hi = np.max([layer.extent.world[1][-2:] for layer in self.compared_layers], axis=0)
        size = np.maximum(hi - lo, 1e-9)
        cell = np.asarray(viewer.canvas.viewbox_size(viewer.layers), float)
        cam = camera(viewer)
        cam.center = tuple((lo + hi) / 2)
        cam.zoom = 0.95 * float(np.min(cell / size))

    def exit_grid(self) -> None:
        """Leave the grid: the layers' order and visibility as they were before Compare (new
        layers made since then keep their place above them), the view fitted again."""
        viewer = self.viewer
        grid = viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid
        grid.enabled = False
        for layer in self.compared_layers:
            if layer in viewer.layers:
                layer.name_overlay.visible = False
        for name, visible in (self._saved_visibility or {}).items():
            if name in viewer.layers:
                viewer.layers[name].visible = visible
        for i, name in enumerate(n for n in (self._saved_order or []) if n in viewer.layers):
            j = viewer.layers.index(name)
            if j != i:
                viewer.layers.move(j, i)
        self._saved_visibility = self._saved_order = None
        self.grid_button.setEnabled(False)
        self.session.fit_view(self.session.current)

    # -- export ---------------------------------------------------------------------------
    def _on_csv(self) -> None:
        path = save_file(self, self.session, "Save table", "comparison.csv", "CSV (*.csv)")
        if path:
            self.save_csv(path, overwrite=True)  # the dialog asked before replacing a file

    def _on_png(self) -> None:
        path = save_file(self, self.session, "Save figure", "comparison.png", "PNG (*.png)")
        if path:
            self.save_figure(path, overwrite=True)

    def save_csv(self, path, overwrite: bool = False):
        if self.table_result is None:
            show_error("compare first")
            return None
        try:
            out = self.table_result.to_csv(path, overwrite=overwrite)
        except Exception as err:  # noqa: BLE001 - shown to the user
            show_error(f"could not write {path}: {err}")
            return None
        show_info(f"table saved to {out}")
        return out

    def save_figure(self, path, overwrite: bool = False):
        """The comparison as a slide: the panels with their kinds and scores, a scale bar,
        the scored region in a legend (:func:`napari_4dstem_ml.figure.comparison_slide`)."""
        from ..figure import comparison_slide

        if self.table_result is None:
            show_error("compare first")
            return None
        ds = self.session.datasets.get(self._dataset)
        step = ds.calibration.scan_step_A if ds is not None else None
        kinds = {m.name: self.kind_of(m.name, m.role) for m in self.images}
        try:
            out = comparison_slide(
                path, self.images, self.table_result, pixel_size=step[1] if step else None,
                unit="Å", kinds=kinds, title=self._dataset, overwrite=overwrite)
        except Exception as err:  # noqa: BLE001 - shown to the user
            show_error(f"could not write {path}: {err}")
            return None
        show_info(f"figure saved to {out}")
        return out
