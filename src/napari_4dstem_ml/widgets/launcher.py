"""Opening the napari window for ``make run`` (see :mod:`napari_4dstem_ml.launch`)."""

from __future__ import annotations

import napari

WIDGETS = ("4D-STEM browser", "Virtual detectors", "Train & reconstruct", "Compare methods")


def open_gui(load_sample: bool = True, widgets: tuple[str, ...] = WIDGETS):
    """Open napari with the widgets docked and the MoS2 sample (or synthetic data) loaded."""
    viewer = napari.Viewer(title="napari-4dstem-ml")
    docks = {}
    for i, name in enumerate(widgets):
        # the browser (diffraction view) on top; the other widgets as tabs below it
        docks[name], _ = viewer.window.add_plugin_dock_widget(
            "napari-4dstem-ml", name, tabify=i >= 2
        )
    if "Train & reconstruct" in docks:
        docks["Train & reconstruct"].raise_()
    if load_sample:
        try:
            viewer.open_sample("napari-4dstem-ml", "mos2")
        except Exception as err:  # noqa: BLE001 - no sample: synthetic data instead
            print(f"MoS2 sample not available ({err}); loading a synthetic data set", flush=True)
            load_synthetic(viewer)
    return viewer


def load_synthetic(viewer) -> None:
    """Synthetic 4D data set + its label, for trying the widgets without the samples."""
    from ..training.synthetic import make_synthetic
    from .session import session_for

    syn = make_synthetic((48, 48), (32, 32))
    step = syn.dataset.scale()[:2]
    viewer.add_image(syn.label, name="synthetic label", scale=step, units="angstrom")
    session_for(viewer).add_dataset("synthetic 4D-STEM", syn.dataset)




def run_event_loop() -> None:
    """Run napari's Qt event loop until the window closes."""
    napari.run()
