"""Tiled prediction equals whole-field prediction, on eager and lazy data."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_4dstem_ml.dataset import Calibration, Dataset4D  # noqa: E402
from napari_4dstem_ml.models import CNN4dConfig, LinearConfig, build_model  # noqa: E402
from napari_4dstem_ml.predict import PredictEvent, iter_predict, predict  # noqa: E402
from napari_4dstem_ml.preprocess import PreprocessConfig, Preprocessor  # noqa: E402


def _setup(model_config, shape=(13, 10, 16, 16), seed=1):
    rng = np.random.default_rng(seed)
    data = rng.poisson(20, size=shape).astype(np.uint16)
    ds = Dataset4D(data, Calibration(detector_pixel=(1.0, 1.0)))
    pre = Preprocessor.fit(ds, PreprocessConfig(compression="power", output_shape=(12, 12)))
    pre = pre.with_label_stats(3.0, 2.0)
    torch.manual_seed(seed)
    model = build_model(model_config, pre.output_shape)
    with torch.no_grad():  # make the linear model's weights non-trivial
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.eval()
    return ds, pre, model


def _brute_force(model, pre, data):
    """forward() on the reflect-padded K×K cluster around every position, in float64 units."""
    k = model.cluster_size
    h = k // 2
    x = pre.transform(data)
    xp = np.pad(x, ((h, h), (h, h), (0, 0), (0, 0)), mode="reflect")
    ny, nx = x.shape[:2]
    clusters = np.stack([xp[y : y + k, xx : xx + k] for y in range(ny) for xx in range(nx)])
    with torch.no_grad():
        out = model(torch.from_numpy(clusters)).numpy().astype(np.float64)
    return (out * pre.label_std + pre.label_mean).reshape(ny, nx)


@pytest.mark.parametrize(
    "config", [LinearConfig(cluster_size=5), CNN4dConfig(cluster_size=5, channels=(2, 3))]
)
def test_tiled_prediction_equals_whole_field(config):
    ds, pre, model = _setup(config)
    ref = _brute_force(model, pre, ds.data)
    whole = predict(model, pre, ds, tile_rows=ds.scan_shape[0])
    for tile_rows in (1, 3, 4):
        tiled = predict(model, pre, ds, tile_rows=tile_rows)
        np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(whole, ref, rtol=1e-4, atol=1e-4)
    assert whole.dtype == np.float32 and whole.shape == ds.scan_shape


def test_lazy_data_and_progress_events():
    da = pytest.importorskip("dask.array")
    ds, pre, model = _setup(LinearConfig(cluster_size=3))
    lazy = Dataset4D(da.from_array(ds.data, chunks=(2, -1, -1, -1)), ds.calibration)
    seen = []
    out_lazy = predict(model, pre, lazy, tile_rows=5, progress=lambda ev: seen.append(ev.rows_done))
    np.testing.assert_allclose(out_lazy, predict(model, pre, ds), rtol=1e-5, atol=1e-5)
    assert seen == [5, 10, 13]
    gen = iter_predict(model, pre, ds, tile_rows=6)
    first = next(gen)
    assert isinstance(first, PredictEvent) and first.rows_done == 6
    assert np.isfinite(first.image[:6]).all() and np.isnan(first.image[6:]).all()
    events = list(gen)
    assert events[-1].fraction == 1.0
    assert model.training is False


@pytest.mark.parametrize("output_pixel_mrad,kind", [(None, "counts"), (2.6, "counts"),
                                                    (2.6, "background-subtracted")])
def test_linear_model_on_raw_detector_equals_the_preprocessed_path(output_pixel_mrad, kind):
    """The linear model runs as one virtual image with its mask mapped onto the raw detector,
    then the K×K convolution: equal to predicting from the preprocessed clusters (resampling,
    angle crop, normalisation, standardisation) — for counts (unsigned integers) and for float
    data with negative values (an EMPAD's background-subtracted frames), whose clip to 0 the
    virtual-image pass does on the fly."""
    import torch

    from napari_4dstem_ml.dataset import Dataset4D
    from napari_4dstem_ml.models import LinearConfig, build_model
    from napari_4dstem_ml.predict import predict
    from napari_4dstem_ml.predict.fields import iter_predict_source
    from napari_4dstem_ml.predict.linear import linear_on_raw_detector
    from napari_4dstem_ml.preprocess import PreprocessConfig, Preprocessor
    from napari_4dstem_ml.training.clusters import PatternSource
    from napari_4dstem_ml.training.synthetic import make_synthetic

    syn = make_synthetic((20, 23), (32, 32), seed=2)
    counts = np.rint(np.asarray(syn.dataset.data)).astype(np.uint16)
    if kind == "counts":
        ds = Dataset4D(counts, syn.dataset.calibration)
    else:  # float32 with a noisy background around 0: a third of the pixels negative
        noise = np.random.default_rng(5).normal(0, 1.5, counts.shape).astype(np.float32)
        ds = Dataset4D(counts.astype(np.float32) + noise, syn.dataset.calibration)
        assert (ds.data < 0).mean() > 0.1
    cfg = PreprocessConfig(max_angle=26.0, output_shape=(24, 24),
                           output_pixel=output_pixel_mrad)
    pre = Preprocessor.fit(ds, cfg).with_label_stats(0.3, 2.0)
    model = build_model(LinearConfig(cluster_size=3, mask_init="random"), pre.output_shape)
    with torch.no_grad():
        model.w.copy_(torch.tensor([1.0, 0.3, -0.2]))
        model.bias.fill_(0.4)
    assert linear_on_raw_detector(model, pre, ds)
    fast = predict(model, pre, ds)
    gen = iter_predict_source(model, PatternSource(ds, pre, cache_budget_bytes=0))
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            slow = stop.value
            break
    np.testing.assert_allclose(fast, slow, rtol=1e-4, atol=1e-4 * np.abs(slow).max())
