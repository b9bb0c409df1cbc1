"""The one reconstruction pipeline: the data are sampled once per job, the domain check and the
preprocessing see the same sample, and the image and uncertainty are the same whether the model
runs in this process or on Dask workers — for every model kind, ensembles included."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_4dstem_ml.dataset import Dataset4D  # noqa: E402
from napari_4dstem_ml.models import (  # noqa: E402
    CNN4dConfig,
    EnsembleConfig,
    LinearConfig,
    build_model,
)
from napari_4dstem_ml.predict import Message, Reconstructor, iter_reconstruct  # noqa: E402
from napari_4dstem_ml.preprocess import PreprocessConfig, Preprocessor  # noqa: E402


def _drain(gen):
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return stop.value, events


def _loaded(ds, kind: str, members: int):
    cfg = PreprocessConfig(max_angle=20.0, output_shape=(16, 16))
    pre = Preprocessor.fit(ds, cfg).with_label_stats(0.5, 2.0)
    torch.manual_seed(1)
    member = (CNN4dConfig(channels=(3, 3)) if kind == "cnn"
              else LinearConfig(cluster_size=3, mask_init="random"))
    config = member if members == 1 else EnsembleConfig(member=member, size=members)
    model = build_model(config, pre.output_shape).eval()
    return SimpleNamespace(model=model, preprocessor=pre, model_config=config, info={})


@pytest.mark.parametrize("kind,members", [("cnn", 1), ("cnn", 2), ("linear", 2)])
def test_reconstructor_equals_the_models_pass_and_samples_once(synthetic, kind, members,
                                                               monkeypatch):
    import napari_4dstem_ml.preprocess as preprocess

    ds = synthetic.dataset
    loaded = _loaded(ds, kind, members)
    ref, _ = _drain(iter_reconstruct(loaded.model, loaded.preprocessor, ds))
    calls = []
    real = preprocess.sample_patterns
    monkeypatch.setattr(preprocess, "sample_patterns",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    report, events = _drain(Reconstructor(loaded, ds).run())
    assert len(calls) == 1  # one sample for the domain check and the preprocessing
    np.testing.assert_allclose(report.image, ref.image, rtol=1e-5, atol=1e-6)
    if members > 1:
        np.testing.assert_allclose(report.uncertainty, ref.uncertainty, rtol=1e-5, atol=1e-6)
        assert np.nanmax(report.uncertainty) > 0
    assert report.where == "in process" and report.metadata()["computed"] == "in process"
    assert events[-1].rows_done == ds.scan_shape[0]


@pytest.mark.slow
@pytest.mark.parametrize("kind,members", [("cnn", 2), ("linear", 1)])
def test_every_model_kind_runs_on_the_workers(synthetic, tmp_path, kind, members):
    """On a Dask cluster (two threads in this process here) the model runs in bands of rows on
    the workers, each reading its rows (and halo) from the file: the same image and ensemble
    spread as in process, the domain check run, and the report saying where it ran."""
    from distributed import Client

    data = np.asarray(synthetic.dataset.data, np.float32)
    path = tmp_path / "data.npy"
    np.save(path, data)
    from napari_4dstem_ml.io import load

    ds = Dataset4D(load(path).data, synthetic.dataset.calibration, source=path, reader="numpy")
    loaded = _loaded(ds, kind, members)
    ref, _ = _drain(Reconstructor(loaded, ds).run())
    with Client(processes=False, n_workers=2, threads_per_worker=1,
                dashboard_address=None) as client:
        report, events = _drain(Reconstructor(loaded, ds, client=client).run())
    np.testing.assert_allclose(report.image, ref.image, rtol=1e-5, atol=1e-6)
    if members > 1:
        np.testing.assert_allclose(report.uncertainty, ref.uncertainty, rtol=1e-5, atol=1e-6)
    assert report.where.startswith("on the Dask cluster at ")
    done = [e for e in events if not isinstance(e, Message)]
    assert done and done[-1].rows_done == ds.scan_shape[0]


def test_a_missing_detector_calibration_is_named_not_borrowed(synthetic):
    """A data set without its detector's mrad per pixel is never given the training data's:
    the missing calibration is named (with the option that supplies it)."""
    from napari_4dstem_ml.preprocess import MissingCalibrationError

    loaded = _loaded(synthetic.dataset, "cnn", 1)
    data = np.asarray(synthetic.dataset.data)[:, :, ::-1].copy()  # another data set, same detector
    bare = Dataset4D(data, synthetic.dataset.calibration.with_(detector_pixel=None))
    with pytest.raises(MissingCalibrationError, match="--detector-pixel"):
        loaded.preprocessor.adapt(bare)
