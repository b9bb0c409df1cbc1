"""npe2 sample data: the MoS2 training sample and the PrScO3 test sample.

Each returns the lazy 4D layer plus the 2D scan-plane images, all calibrated in Å: the label
on its own grid (its pixel size as ``scale``, its origin as ``translate``, so it overlays the
scan field), the ground truth and the conventional ADF image (``scale`` = scan step). When a
napari viewer is current, the 4D-STEM browser is docked too, so the 4D data set goes to the
diffraction view and the main canvas stays the scan plane: the 4D data set is then handed to
the browser directly (not returned as a layer, which napari would first add to the scan plane).
"""

from __future__ import annotations

from ._reader import layer_data

SCAN_AXES = ("y", "x")


def _browser_session():
    """The plugin session of the current viewer, with the browser docked (or ``None``)."""
    try:
        import napari

        viewer = napari.current_viewer()
        if viewer is None:
            return None
        from .widgets.session import session_for

        session = session_for(viewer)
        viewer.window.add_plugin_dock_widget("napari-4dstem-ml", "4D-STEM browser")
        return session
    except Exception:  # noqa: BLE001 - docking is a convenience; fall back to a 4D layer
        return None


def _sample(key: str) -> list[tuple]:
    layers = sample_layers(key)
    session = _browser_session()
    if session is not None:
        data, kwargs, _ = layers.pop(0)
        name = session.add_dataset(kwargs["name"], kwargs["metadata"]["dataset4d"])
        for _, kw, _ in layers:  # the name it got (a second copy is renamed)
            kw["metadata"]["dataset"] = name
    return layers


def sample_layers(key: str) -> list[tuple]:
    """Layer data tuples of sample ``key`` ("mos2" or "prsco3")."""
    from .dataset import napari_unit
    from .display import robust_limits
    from .samples import SAMPLES, load_sample
    from .widgets.naming import label_title

    s = load_sample(key)
    ds = s.dataset
    title = SAMPLES[key].display_name.split(" (")[0]
    step = ds.calibration.scan_step_A or (1.0, 1.0)
    unit = napari_unit("A") if ds.calibration.scan_step_A else "pixel"
    scan = {"scale": step, "units": (unit, unit), "axis_labels": SCAN_AXES}
    px = float(s.label_pixel_size_A)
    name = f"{title} 4D-STEM"

    def role(r: str, **extra) -> dict:
        # the role and data set of a scan-plane image: the widgets find them by it
        return {"metadata": {"role": r, "dataset": name, **extra}}

    layers = [
        layer_data(ds, name),
        (
            s.ground_truth,
            {
                "name": f"{title} ground truth",
                "colormap": "gray",
                "visible": False,
                "contrast_limits": robust_limits(s.ground_truth),
                **scan,
                # blurred before sampling, for the Compare dock's resolution columns
                **role("ground_truth", **({"references": s.ground_truth_references}
                                          if s.ground_truth_references else {})),
            },
            "image",
        ),
        (
            s.adf,
            {
                "name": f"{title} ADF ({s.adf_inner_mrad:.0f}-{s.adf_outer_mrad:.0f} mrad)",
                "colormap": "gray",
                "contrast_limits": robust_limits(s.adf),
                **scan,
                **role("adf"),
            },
            "image",
        ),
        (
            s.label,
            {
                # what the label is (ptychography, low-passed potential, …): every view says it
                "name": f"{title} {label_title(s.label_method)}",
                "colormap": "gray",
                "scale": (px, px),
                "translate": tuple(s.label_origin_A),
                "units": (unit, unit),
                "axis_labels": SCAN_AXES,
                "contrast_limits": robust_limits(s.label),
                **role(
                    "label",
                    own_grid=True,
                    label_pixel_size_A=px,
                    label_origin_A=s.label_origin_A,
                    label_method=s.label_method,
                ),
            },
            "image",
        ),
    ]
    return layers


def sample_mos2() -> list[tuple]:
    """MoS2 monolayer (training, with ptychography label)."""
    return _sample("mos2")


def sample_prsco3() -> list[tuple]:
    """PrScO3 thick cross-section (test)."""
    return _sample("prsco3")
