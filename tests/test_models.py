"""Linear and 4D-CNN models: formulas by hand, fully convolutional predict_field, configs."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_4dstem_ml.models import (  # noqa: E402
    CNN4d,
    CNN4dConfig,
    LinearConfig,
    ModelConfigError,
    RadialLinear,
    build_model,
    config_from_dict,
)


def clusters_of(tile: np.ndarray, k: int) -> np.ndarray:
    """All K×K clusters of a padded tile (Ny+K-1, Nx+K-1, ky, kx) → (Ny*Nx, K, K, ky, kx)."""
    ny, nx = tile.shape[0] - k + 1, tile.shape[1] - k + 1
    return np.stack([tile[y : y + k, x : x + k] for y in range(ny) for x in range(nx)])


def randomise_linear(model: RadialLinear, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.w.copy_(torch.randn(model.w.shape, generator=g))
        model.m.copy_(torch.randn(model.m.shape, generator=g))
        model.bias.fill_(0.37)


def linear_by_hand(model: RadialLinear, clusters: np.ndarray) -> np.ndarray:
    """out = sum_j w(|r_j|) sum_k m(|k|) I_j(k) + b with np.interp for m and a dict for w."""
    k = model.cluster_size
    ky, kx = clusters.shape[-2:]
    nodes, m = model.radial_profile()
    r_max = (
        np.hypot((ky - 1) / 2, (kx - 1) / 2) if model.config.r_max is None else model.config.r_max
    )
    own_nodes = np.linspace(0.0, r_max, model.config.n_radial_bins)  # float64, own grid
    np.testing.assert_allclose(nodes, own_nodes, rtol=1e-6)
    yy, xx = np.meshgrid(np.arange(ky) - (ky - 1) / 2, np.arange(kx) - (kx - 1) / 2, indexing="ij")
    rk = np.hypot(yy, xx)
    mask = np.interp(rk, own_nodes, m.astype(np.float64), right=0.0)
    # one weight per distinct distance: map distances to the learned values by sorted r²
    r2_sorted = sorted(
        {
            dy * dy + dx * dx
            for dy in range(-(k // 2), k // 2 + 1)
            for dx in range(-(k // 2), k // 2 + 1)
        }
    )
    wvals = model.w.detach().numpy().astype(np.float64)
    assert len(wvals) == len(r2_sorted)
    w_of = dict(zip(r2_sorted, wvals))
    c = k // 2
    out = np.full(len(clusters), model.bias.item())
    for j in range(k):
        for i in range(k):
            vi = (clusters[:, j, i].astype(np.float64) * mask).sum(axis=(-2, -1))
            out += w_of[(j - c) ** 2 + (i - c) ** 2] * vi
    return out


@pytest.mark.parametrize("k,det,r_max", [(5, (12, 12), None), (3, (9, 14), 5.0), (7, (8, 8), None)])
def test_linear_forward_matches_formula(k, det, r_max):
    model = RadialLinear(LinearConfig(cluster_size=k, n_radial_bins=7, r_max=r_max), det)
    randomise_linear(model)
    x = np.random.default_rng(0).normal(size=(6, k, k, *det)).astype(np.float32)
    out = model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(out, linear_by_hand(model, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("grad", [False, True])
def test_linear_predict_field_equals_forward_everywhere(grad):
    k, det = 5, (10, 11)
    model = RadialLinear(LinearConfig(cluster_size=k, n_radial_bins=6), det)
    randomise_linear(model, 1)
    tile = np.random.default_rng(1).normal(size=(9 + k - 1, 7 + k - 1, *det)).astype(np.float32)
    with torch.set_grad_enabled(grad):  # False: NumPy engine path; True: torch path
        field = model.predict_field(torch.from_numpy(tile))
        direct = model(torch.from_numpy(clusters_of(tile, k)))
    assert tuple(field.shape) == (9, 7)
    np.testing.assert_allclose(
        field.detach().numpy().ravel(), direct.detach().numpy(), rtol=1e-4, atol=1e-4
    )
    # NumPy input is accepted too
    with torch.no_grad():
        np.testing.assert_allclose(
            model.predict_field(tile).numpy(), field.detach().numpy(), rtol=1e-5, atol=1e-5
        )


def test_linear_weights_tied_and_mask_radial_after_training_step():
    k, det = 5, (16, 16)
    model = RadialLinear(LinearConfig(cluster_size=k, n_radial_bins=8), det)
    randomise_linear(model, 2)
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.normal(size=(8, k, k, *det)).astype(np.float32))
    x[:, 0, 1] += 5.0  # strongly asymmetric data
    x[..., 3, 1:5] += 3.0
    loss = ((model(x) - torch.arange(8.0)) ** 2).mean()
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 1e-3 * p.grad
    w = model.cluster_weights()
    assert w.shape == (k, k)
    assert np.array_equal(w, w.T) and np.array_equal(w, w[::-1]) and np.array_equal(w, w[:, ::-1])
    assert len(np.unique(w)) == 6  # r² in {0, 1, 2, 4, 5, 8}
    assert w[1, 2] == w[2, 1] == w[3, 2] and w[0, 1] == w[1, 0] == w[4, 3]  # r² = 1, r² = 5
    mask = model.detector_mask()
    assert mask.dtype == np.float32 and mask.shape == det
    np.testing.assert_allclose(mask, mask.T, atol=1e-6)
    np.testing.assert_allclose(mask, mask[::-1], atol=1e-6)
    np.testing.assert_allclose(mask, mask[:, ::-1], atol=1e-6)
    # equal radius → equal value (e.g. (dy, dx) = (0.5, 3.5) and (3.5, 0.5) offsets, and 5-ring)
    yy, xx = np.meshgrid(np.arange(16) - 7.5, np.arange(16) - 7.5, indexing="ij")
    r2 = yy**2 + xx**2
    for val in np.unique(r2):
        vals = mask[r2 == val]
        assert np.ptp(vals) < 1e-6


def test_linear_initialisation_and_export(tmp_path):
    det = (20, 20)
    model = RadialLinear(LinearConfig(), det)
    w = model.cluster_weights()
    assert w[2, 2] == 1 and np.count_nonzero(w) == 1
    mask = model.detector_mask()
    assert mask.sum() == pytest.approx(1.0, rel=1e-5)
    assert mask[10, 10] > 0 and mask[0, 0] == 0  # a bright-field-like disk
    # at initialisation the model is the normalised virtual BF image of the centre pattern
    x = np.random.default_rng(3).random((2, 5, 5, *det)).astype(np.float32)
    out = model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(out, (x[:, 2, 2] * mask).sum(axis=(-2, -1)), rtol=1e-5)
    path = model.export_detector_mask(tmp_path / "mask")
    assert path.suffix == ".npy"
    np.testing.assert_array_equal(np.load(path), mask)
    r, m = model.radial_profile()
    assert r.shape == m.shape == (32,) and r[0] == 0


def cnn_clusters_vs_field(model: CNN4d, tile: np.ndarray, **kw):
    k = model.cluster_size
    with torch.inference_mode():
        field = model.predict_field(torch.from_numpy(tile), **kw)
        direct = model(torch.from_numpy(clusters_of(tile, k)))
    return field.numpy(), direct.numpy()


@pytest.mark.parametrize(
    "cfg,det,rows",
    [
        (CNN4dConfig(channels=(3, 4)), (16, 16), None),
        (CNN4dConfig(channels=(2, 3), input_pool=1, pool_mode="avg", activation="elu"), (9, 12), 2),
        (
            CNN4dConfig(cluster_size=7, channels=(2, 2), kernel_det=5, activation="gelu"),
            (12, 10),
            3,
        ),
    ],
)
def test_cnn_predict_field_equals_forward_everywhere(cfg, det, rows):
    torch.manual_seed(0)
    model = build_model(cfg, det).eval()
    k = cfg.cluster_size
    tile = np.random.default_rng(4).normal(size=(5 + k - 1, 6 + k - 1, *det)).astype(np.float32)
    field, direct = cnn_clusters_vs_field(model, tile, rows_per_chunk=rows)
    assert field.shape == (5, 6)
    assert np.ptp(direct) > 0
    np.testing.assert_allclose(field.ravel(), direct, rtol=1e-4, atol=1e-5)


def test_cnn_shapes_gradients_and_dropout():
    torch.manual_seed(1)
    model = build_model(CNN4dConfig(channels=(2, 3)), (16, 16))
    assert isinstance(model, CNN4d) and model.cluster_size == 5
    assert model.feature_shape == (3, 2, 2)
    x = torch.randn(4, 5, 5, 16, 16)
    y = model.train()(x)
    assert y.shape == (4,)
    y.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    model.eval()
    assert torch.equal(model(x), model(x))  # deterministic without dropout
    with pytest.raises(ValueError, match="expects"):
        model(torch.randn(4, 3, 3, 16, 16))
    with pytest.raises(ValueError, match="predict_field"):
        model.predict_field(torch.randn(4, 8, 16, 16))
    with pytest.raises(ValueError, match="too small"):
        build_model(CNN4dConfig(input_pool=4, pool_det=4), (16, 16))


@pytest.mark.parametrize(
    "cfg",
    [
        LinearConfig(n_radial_bins=12, r_max=20.0),
        CNN4dConfig(channels=(4, 6), dropout=0.1, pool_mode="avg"),
    ],
)
def test_config_json_round_trip(cfg):
    d = json.loads(json.dumps(cfg.to_dict()))
    back = config_from_dict(d)
    assert back == cfg and type(back) is type(cfg)
    assert type(cfg).from_dict(d) == cfg
    model = build_model(back, (16, 16))
    assert model.config == cfg


def test_config_errors():
    with pytest.raises(ModelConfigError, match="kind"):
        config_from_dict({"kind": "transformer"})
    with pytest.raises(ModelConfigError, match="kind"):
        LinearConfig.from_dict(CNN4dConfig().to_dict())
    with pytest.raises(ModelConfigError, match="unknown"):
        config_from_dict({"kind": "linear", "n_bins": 3})
    with pytest.raises(ValueError, match="cluster_size"):
        CNN4dConfig(cluster_size=4)
    with pytest.raises(ModelConfigError, match="kernel_scan"):
        CNN4dConfig(cluster_size=3, kernel_scan=3)
    with pytest.raises(ModelConfigError, match="dropout"):
        CNN4dConfig(dropout=1.0)
    with pytest.raises(ModelConfigError, match="channels"):
        CNN4dConfig(channels=(8,))
    with pytest.raises(ModelConfigError, match="n_radial_bins"):
        LinearConfig(n_radial_bins=1)
