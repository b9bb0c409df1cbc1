"""Sample data through napari: every key opens; layers are calibrated and the 4D data set is
adopted by the browser so the main canvas stays the scan plane."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_4dstem_ml import Calibration, Dataset4D, samples

pytestmark = pytest.mark.gui


def _fake_sample(key: str) -> samples.SampleData:
    rng = np.random.default_rng(0)
    data = rng.random((6, 6, 8, 8), dtype=np.float32)
    cal = Calibration(
        scan_step=(0.2, 0.2), detector_pixel=(1.5, 1.5), energy_ev=80e3, convergence_mrad=4.0
    )
    return samples.SampleData(
        key=key,
        path=Path(f"{key}.h5"),
        dataset=Dataset4D(data, cal, reader="fake"),
        label=rng.random((10, 10), dtype=np.float32),
        label_pixel_size_A=0.1,
        label_origin_A=(0.05, -0.1),
        label_method="ptychography",
        ground_truth=rng.random((6, 6), dtype=np.float32),
        adf=rng.random((6, 6), dtype=np.float32),
        adf_inner_mrad=30.0,
        adf_outer_mrad=80.0,
        ground_truth_references={"label": rng.random((6, 6), dtype=np.float32)},
    )


@pytest.mark.parametrize("key", sorted(samples.SAMPLES))
def test_sample_layers_are_calibrated(make_napari_viewer, qtbot, monkeypatch, key):
    from napari_4dstem_ml.widgets.session import session_for

    monkeypatch.setattr(samples, "load_sample", _fake_sample)
    viewer = make_napari_viewer()
    viewer.open_sample("napari-4dstem-ml", key)
    s = session_for(viewer)
    qtbot.waitUntil(lambda: s.current is not None, timeout=5000)
    assert s.dataset.shape == (6, 6, 8, 8)
    assert all(layer.ndim == 2 for layer in viewer.layers)  # the 4D layer went to the browser
    label = next(layer for layer in viewer.layers if layer.name.endswith("label (ptychography)"))
    np.testing.assert_allclose(label.scale, (0.1, 0.1))
    np.testing.assert_allclose(label.translate, (0.05, -0.1))
    adf = next(layer for layer in viewer.layers if " ADF " in layer.name)
    np.testing.assert_allclose(adf.scale, (0.2, 0.2))
    assert str(adf.units[0]) == "angstrom"
    # the ground truth carries itself blurred before sampling, for the Compare dock
    gt = next(layer for layer in viewer.layers if layer.metadata.get("role") == "ground_truth")
    assert set(gt.metadata["references"]) == {"label"}
    from napari_4dstem_ml.widgets.compare import method_image

    assert method_image(gt).references is gt.metadata["references"]


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(samples.SAMPLES))
def test_real_sample_opens(make_napari_viewer, qtbot, key):
    try:
        samples.sample_path(key)
    except FileNotFoundError as err:
        pytest.skip(f"sample file not generated yet: {err}")
    from napari_4dstem_ml.widgets.session import session_for

    viewer = make_napari_viewer()
    viewer.open_sample("napari-4dstem-ml", key)
    s = session_for(viewer)
    qtbot.waitUntil(lambda: s.current is not None, timeout=10000)
    assert len(s.dataset.shape) == 4
    assert len(viewer.layers) >= 3
