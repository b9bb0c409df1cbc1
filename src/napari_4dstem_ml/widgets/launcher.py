"""Opening the napari window for ``make run`` (see :mod:`napari_4dstem_ml.launch`).

The window fills the screen's available area; the 4D-STEM browser (the diffraction view) sits on
top of the right dock area and the other docks are tabs below it (:mod:`.layout`), so that the
whole workflow fits a 1366 × 768 screen without floating or resizing a dock.
"""

from __future__ import annotations

import napari

#: the docks ``make run`` opens: the browser on top, the others as tabs below it
WIDGETS = ("4D-STEM browser", "Calibration", "Virtual detectors", "Train & reconstruct",
           "Compare methods")
#: the tab raised at launch (the first step after browsing)
FIRST_TAB = "Virtual detectors"


def open_gui(load_sample: bool = True, widgets: tuple[str, ...] = WIDGETS, screen=None):
    """Open napari with the widgets docked and the MoS2 sample (or synthetic data) loaded,
    the window fitted to ``screen`` (default: the screen it opens on)."""
    from .layout import fit_window, tab_group

    viewer = napari.Viewer(title="napari-4dstem-ml")
    docks = {}
    for name in widgets:
        docks[name], _ = viewer.window.add_plugin_dock_widget("napari-4dstem-ml", name)
    # the browser on top, the others as one group of tabs below it, in the order given
    tab_group(viewer.window._qt_window, [d for d in docks.values()
                                         if not getattr(d.widget(), "ON_TOP", False)])
    if load_sample:
        try:
            viewer.open_sample("napari-4dstem-ml", "mos2")
        except Exception as err:  # noqa: BLE001 - no sample: synthetic data instead
            print(f"MoS2 sample not available ({err}); loading a synthetic data set", flush=True)
            load_synthetic(viewer)
    fit_window(viewer, screen)
    first = FIRST_TAB
    from .session import session_for

    ds = session_for(viewer).dataset
    if ds is not None and "Calibration" in docks and any(
            getattr(ds.calibration, f) is None
            for f in ("energy_ev", "convergence_mrad", "detector_pixel", "scan_step")):
        first = "Calibration"  # a calibration is missing: say so first
    if first in docks:
        docks[first].raise_()
    return viewer


def load_synthetic(viewer) -> None:
    """Synthetic 4D data set + its label, for trying the widgets without the samples."""
    from ..training.synthetic import make_synthetic
    from .session import session_for

    syn = make_synthetic((48, 48), (32, 32))
    step = syn.dataset.scale()[:2]
    session_for(viewer).add_dataset("synthetic 4D-STEM", syn.dataset)
    viewer.add_image(syn.label, name="synthetic label", scale=step, units="angstrom",
                     metadata={"role": "label", "dataset": "synthetic 4D-STEM"})


def run_event_loop() -> None:
    """Run napari's Qt event loop until the window closes."""
    napari.run()
