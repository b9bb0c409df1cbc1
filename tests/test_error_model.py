"""The error model behind the uncertainty map: fitted where the error is known, it ranks the
error of a new image; stored as JSON in the checkpoint; used by the Reconstructor."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_4dstem_ml.error_model import ErrorModel, error_features, local_rms_error
from napari_4dstem_ml.metrics import uncertainty_error_correlation


def _case(seed: int, n: int = 64):
    """A lattice-like reference; the image = reference + noise whose σ is a smooth random
    field; ``spread`` is a noisy view of that σ (as an ensemble's spread would be)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    ref = np.cos(2 * np.pi * yy / 6.0) * np.cos(2 * np.pi * xx / 7.0)
    sigma = np.exp(1.2 * ndimage.gaussian_filter(rng.standard_normal((n, n)), 6) /
                   ndimage.gaussian_filter(rng.standard_normal((n, n)), 6).std())
    image = ref + 0.1 * sigma * rng.standard_normal((n, n))
    spread = 0.1 * sigma * np.exp(0.3 * rng.standard_normal((n, n)))
    return image, ref, spread


def test_fitted_on_one_image_it_ranks_the_error_of_another():
    image, ref, spread = _case(0)
    region = np.zeros(image.shape, bool)
    region[32:] = True
    em = ErrorModel.fit(image, ref, spread=spread, region=region)
    assert em.features[0] == "spread" and em.coef[0] > 0.2  # the spread carries the signal
    assert em.n_fit == int(region[2:-2, 2:-2].sum())
    img2, ref2, spread2 = _case(1)
    u = em.predict(img2, spread2)
    assert u.shape == img2.shape and u.dtype == np.float32 and (u > 0).all()
    rho = uncertainty_error_correlation(img2, u, ref2)
    assert rho > 0.6
    # against a map that knows nothing (the image's own detail alone) it does better
    blind = ErrorModel.fit(image, ref, region=region).predict(img2)
    assert rho > uncertainty_error_correlation(img2, blind, ref2) + 0.2
    # in label units: the predicted local RMS error is of the size of the actual one
    actual = local_rms_error(img2, ref2)
    assert 0.3 < np.median(u) / np.median(actual) < 3


def test_features_are_centred_logs_and_distance_is_optional():
    image, _, spread = _case(2)
    f = error_features(image, spread)
    assert set(f) == {"spread", "gradient", "detail"}
    for v in f.values():
        assert v.shape == image.shape and abs(np.median(v)) < 1e-9
    f2 = error_features(image, None, distance=np.full(image.shape, 3.0))
    assert "spread" not in f2 and np.allclose(f2["distance"], np.log1p(3.0))


def test_round_trip_and_refusals():
    image, ref, spread = _case(3)
    em = ErrorModel.fit(image, ref, spread=spread)
    again = ErrorModel.from_dict(em.to_dict())
    assert again == em
    np.testing.assert_array_equal(again.predict(image, spread), em.predict(image, spread))
    assert ErrorModel.from_dict(None) is None
    assert ErrorModel.from_dict({"features": ["spread", "colour"], "coef": [1, 2], "intercept": 0}) is None
    assert ErrorModel.from_dict({"features": ["spread"], "coef": [float("nan")], "intercept": 0}) is None
    with pytest.raises(ValueError, match="usable positions"):
        ErrorModel.fit(image[:6, :6], ref[:6, :6])
    with pytest.raises(ValueError, match="differ in shape"):
        ErrorModel.fit(image, ref[:10])


def _reconstruct(reconstructor):
    """Run a Reconstructor to its report."""
    gen = reconstructor.run()
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def test_training_fits_it_and_the_reconstructor_maps_the_uncertainty_with_it():
    """A linear ensemble trained in a few steps: the checkpoint's error model was fitted on
    the validation half (the label known there); the Reconstructor keeps the ensemble's spread
    as its uncertainty with the error model's map beside it, a single model's uncertainty is
    the error model's map, and the metadata says which is which."""
    import json
    from types import SimpleNamespace

    torch = pytest.importorskip("torch")
    from napari_4dstem_ml.models import EnsembleConfig, LinearConfig
    from napari_4dstem_ml.predict import Reconstructor
    from napari_4dstem_ml.preprocess import PreprocessConfig
    from napari_4dstem_ml.training.loop import TrainConfig, run_training
    from napari_4dstem_ml.training.synthetic import make_synthetic

    torch.manual_seed(0)
    syn = make_synthetic((24, 28), (24, 24), seed=0)
    cfg = TrainConfig(epochs=1, lr=0.01, batch_size=64, num_threads=1, preview_every=0, max_steps=3)
    res = run_training(syn.dataset, syn.label, EnsembleConfig(LinearConfig(cluster_size=3), size=2),
                       PreprocessConfig(), cfg)
    d = res.train_summary["error_model"]
    assert d is not None and d["features"][0] == "spread" and d["n_fit"] > 32
    loaded = SimpleNamespace(model=res.model, preprocessor=res.preprocessor,
                             model_config=res.model_config,
                             info={"train_summary": json.loads(json.dumps(res.train_summary))})
    report = _reconstruct(Reconstructor(loaded, syn.dataset))
    # an ensemble keeps its spread as the uncertainty; the error model's map is beside it
    assert report.uncertainty_kind == "ensemble spread" and report.uncertainty is report.spread
    em = ErrorModel.from_dict(d)
    np.testing.assert_allclose(report.error_map, em.predict(report.image, report.spread), rtol=1e-6)
    meta = json.loads(json.dumps(report.metadata()))
    assert meta["uncertainty"]["kind"] == "ensemble spread"
    assert meta["uncertainty"]["error_model"]["features"] == d["features"]
    # a single model's uncertainty is the error model's map
    single = run_training(syn.dataset, syn.label, LinearConfig(cluster_size=3), PreprocessConfig(), cfg)
    loaded1 = SimpleNamespace(model=single.model, preprocessor=single.preprocessor,
                              model_config=single.model_config,
                              info={"train_summary": json.loads(json.dumps(single.train_summary))})
    rep1 = _reconstruct(Reconstructor(loaded1, syn.dataset))
    assert rep1.uncertainty_kind == "error model" and rep1.spread is None
    em1 = ErrorModel.from_dict(single.train_summary["error_model"])
    assert "spread" not in em1.features
    np.testing.assert_allclose(rep1.uncertainty, em1.predict(rep1.image), rtol=1e-6)
