"""The direct (alternating least squares) fit of the radial linear model."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_4dstem_ml.models import LinearConfig, build_model  # noqa: E402
from napari_4dstem_ml.models.linear_solve import cluster_features, fit_radial_linear  # noqa: E402


def _clusters(field: np.ndarray, k: int, ys, xs) -> np.ndarray:
    """Brute force: K×K clusters with np.pad 'reflect' edges, (B, K, K, ky, kx)."""
    h = k // 2
    padded = np.pad(field, ((h, h), (h, h), (0, 0), (0, 0)), mode="reflect")
    return np.stack([padded[y : y + k, x : x + k] for y, x in zip(ys, xs)])


@pytest.fixture
def planted():
    rng = np.random.default_rng(4)
    field = rng.random((14, 12, 16, 16)).astype(np.float32)
    truth = build_model(LinearConfig(cluster_size=3, n_radial_bins=8), (16, 16))
    with torch.no_grad():
        truth.w.copy_(torch.tensor([1.0, -0.4, 0.15]))
        truth.m.copy_(torch.from_numpy(rng.normal(size=8)).float())
        truth.bias.fill_(0.7)
    ys, xs = np.nonzero(np.ones((14, 12), bool))
    with torch.no_grad():
        target = truth(torch.from_numpy(_clusters(field, 3, ys, xs))).numpy().astype(np.float64)
    return field, truth, ys, xs, target


def test_cluster_features_equal_brute_force_projection(planted):
    field, truth, ys, xs, _ = planted
    interp = truth.interp.numpy().astype(np.float64)
    radial = field.reshape(14, 12, -1).astype(np.float64) @ interp
    feats = cluster_features(radial, 3, ys, xs)
    cl = _clusters(field.astype(np.float64), 3, ys, xs).reshape(len(ys), 9, -1) @ interp
    groups = truth.group_index.numpy().ravel()
    ref = np.zeros_like(feats)
    for j, g in enumerate(groups):
        ref[:, g] += cl[:, j]
    np.testing.assert_allclose(feats, ref, rtol=1e-12)


def test_als_recovers_a_planted_model_exactly(planted):
    field, truth, ys, xs, target = planted
    model = build_model(LinearConfig(cluster_size=3, n_radial_bins=8), (16, 16))
    res = fit_radial_linear(model, field, target, ys, xs, ridge=0.0)
    assert res.mse[-1] < 1e-10 * np.var(target)
    with torch.no_grad():
        pred = model(torch.from_numpy(_clusters(field, 3, ys, xs))).numpy()
    np.testing.assert_allclose(pred, target, atol=1e-4)
    # the factorised model is unique up to (w·c, m/c); w[0] = 1 fixes it here
    np.testing.assert_allclose(model.cluster_weights()[1, 1], 1.0)
    np.testing.assert_allclose(model.detector_mask(), truth.detector_mask(), atol=1e-4)


def test_als_never_sees_patterns_outside_the_training_clusters(planted):
    """The least-squares start uses only the clusters of the training positions: replacing
    every other pattern by noise leaves the fit bit-for-bit unchanged."""
    field, _, _, _, target = planted
    ys, xs = np.nonzero(np.ones((14, 12), bool))
    train = (ys >= 2) & (ys < 6)  # training positions; their 3×3 clusters span rows 1..6
    noisy = field.copy()
    noisy[7:] = np.random.default_rng(9).normal(size=noisy[7:].shape) * 100
    noisy[0] = -noisy[0] * 50
    fits = []
    for f in (field, noisy):
        model = build_model(LinearConfig(cluster_size=3, n_radial_bins=8), (16, 16))
        fits.append(fit_radial_linear(model, f, target[train], ys[train], xs[train]))
    np.testing.assert_array_equal(fits[0].w, fits[1].w)
    np.testing.assert_array_equal(fits[0].m, fits[1].m)
