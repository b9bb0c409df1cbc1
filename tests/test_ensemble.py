"""Deep ensembles: mean and spread, larger spread off the training distribution."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_4dstem_ml.dataset import Dataset4D  # noqa: E402
from napari_4dstem_ml.models import CNN4dConfig, EnsembleConfig, LinearConfig, build_model  # noqa: E402
from napari_4dstem_ml.models.config import config_from_dict  # noqa: E402
from napari_4dstem_ml.predict import iter_reconstruct, predict  # noqa: E402
from napari_4dstem_ml.preprocess import PreprocessConfig  # noqa: E402
from napari_4dstem_ml.training.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from napari_4dstem_ml.training.loop import TrainConfig, run_training  # noqa: E402
from napari_4dstem_ml.training.synthetic import make_synthetic  # noqa: E402


def _drain(gen):
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def test_ensemble_config_and_mean():
    cfg = EnsembleConfig(member=CNN4dConfig(channels=(2, 4)), size=3, mirror_average=False)
    assert config_from_dict(cfg.to_dict()) == cfg
    torch.manual_seed(0)
    model = build_model(cfg, (16, 16)).eval()
    x = torch.randn(4, 5, 5, 16, 16)
    each = model.forward_members(x)
    assert each.shape == (3, 4)
    torch.testing.assert_close(model(x), each.mean(0))
    field = torch.randn(9, 10, 16, 16)
    torch.testing.assert_close(model.predict_field(field), model.predict_field_members(field).mean(0))


def test_mirror_average_makes_the_prediction_mirror_symmetric():
    """With ``mirror_average`` (the default for CNN members) the eval-mode prediction of a
    mirrored scan (scan x and kx flipped) is the mirrored prediction, exactly — which no
    network alone is — and equals the cluster-by-cluster forward at every position (brute
    force); training steps see each member once; old checkpoints' configs read as off."""
    cfg = EnsembleConfig(member=CNN4dConfig(channels=(2, 4)), size=2)
    assert cfg.mirror_average is True and config_from_dict(cfg.to_dict()) == cfg
    old = {k: v for k, v in cfg.to_dict().items() if k != "mirror_average"}
    assert config_from_dict(old).mirror_average is False
    assert EnsembleConfig(member=LinearConfig(), size=2).mirror_average is False
    with pytest.raises(ValueError, match="mirror_average needs CNN members"):
        EnsembleConfig(member=LinearConfig(), size=2, mirror_average=True)
    torch.manual_seed(1)
    model = build_model(cfg, (16, 16)).eval()
    field = torch.randn(11, 12, 16, 16)
    mirrored = field.flip((1, 3))
    with torch.inference_mode():
        img = model.predict_field(field)
        img_m = model.predict_field(mirrored)
        each = model.predict_field_members(field)
        plain = torch.stack([m.predict_field(field) for m in model.members])
        plain_m = torch.stack([m.predict_field(mirrored) for m in model.members])
    assert each.shape == (4, 7, 8)
    torch.testing.assert_close(img_m, img.flip(1), rtol=1e-5, atol=1e-6)
    # not a property of the members themselves
    assert (plain_m - plain.flip(2)).abs().max() > 1e-3 * plain.abs().max()
    # brute force: every position's cluster, and its mirror, through every member
    k = model.cluster_size
    ny, nx = img.shape
    clusters = torch.stack([field[i:i + k, j:j + k] for i in range(ny) for j in range(nx)])
    with torch.inference_mode():
        brute = torch.stack([torch.cat([m(clusters), m(clusters.flip((2, 4)))]).reshape(2, ny, nx)
                             for m in model.members]).mean((0, 1))
        assert model.forward_members(clusters).shape == (4, ny * nx)
    torch.testing.assert_close(img, brute, rtol=1e-4, atol=1e-5)
    model.train()
    assert model.forward_members(clusters[:3]).shape == (2, 3)
    assert model.predict_field_members(field).shape == (2, 7, 8)


def test_mirror_average_changes_how_a_model_is_applied_not_how_it_is_trained():
    """Two trainings, mirror averaging on and off, same seeds: the same validation losses, the
    same epoch kept, the same weights; only the applied model's image differs."""
    syn = make_synthetic(scan_shape=(16, 16), detector_shape=(12, 12), seed=0)
    results = []
    for mirror in (False, True):
        cfg = EnsembleConfig(member=CNN4dConfig(cluster_size=5, channels=(2, 2)), size=2,
                             mirror_average=mirror)
        results.append(run_training(syn.dataset, syn.label, cfg, PreprocessConfig(compression="power"),
                                    TrainConfig(epochs=3, lr=3e-3, batch_size=16, seed=2,
                                                num_threads=1, preview_every=0, device="cpu")))
    off, on = results
    assert [h["val_loss"] for h in off.history] == [h["val_loss"] for h in on.history]
    assert off.best_epoch == on.best_epoch
    for a, b in zip(off.model.state_dict().values(), on.model.state_dict().values()):
        assert torch.equal(a, b)
    assert on.model.mirror_average and not off.model.mirror_average
    img_off = _drain(iter_reconstruct(off.model, off.preprocessor, syn.dataset)).image
    img_on = _drain(iter_reconstruct(on.model, on.preprocessor, syn.dataset)).image
    assert np.abs(img_on - img_off).max() > 1e-4 * np.abs(img_off).max()
    with on.model.single_view():
        assert not on.model.mirror_average
        same = _drain(iter_reconstruct(on.model, on.preprocessor, syn.dataset)).image
    assert on.model.mirror_average
    np.testing.assert_array_equal(same, img_off)


def test_mirrored_views_are_switched_off_where_they_lower_validation_r(tmp_path):
    """A label that is odd under the mirror (the potential's gradient along scan x, as a
    differential phase contrast image is): the mirrored views predict its negative, so training
    measures them on the validation rows, switches them off, and the config, the checkpoint and
    ``train_summary`` say so; on the whole scan the single view is indeed the better image. An
    even label (the potential itself) keeps them."""
    syn = make_synthetic(scan_shape=(24, 24), detector_shape=(16, 16), seed=0)
    label = np.asarray(syn.label)
    odd = np.gradient(label, axis=1)
    runs = {}
    for name, target in (("odd", odd), ("even", label)):
        cfg = EnsembleConfig(member=CNN4dConfig(cluster_size=5, channels=(2, 2)), size=2)
        runs[name] = run_training(syn.dataset, target, cfg, PreprocessConfig(compression="power"),
                                  TrainConfig(epochs=4, lr=3e-3, batch_size=16, seed=2,
                                              num_threads=1, preview_every=0, device="cpu"))
    res = runs["odd"]
    chosen = res.train_summary["mirror_average"]
    assert chosen["n_sets"] == 1 and not chosen["kept"]
    assert chosen["r_mirrored"] < chosen["r_members"] - 0.2
    assert not res.model.mirror_average and not res.model_config.mirror_average
    path = save_checkpoint(tmp_path / "odd.pt", res.model, res.model_config, res.preprocessor,
                           train_summary=res.train_summary)
    assert not load_checkpoint(path).model.mirror_average
    # independent of the validation rows: the whole scan, against the label, both ways
    single = _drain(iter_reconstruct(res.model, res.preprocessor, syn.dataset)).image
    res.model.mirror_average = True
    both = _drain(iter_reconstruct(res.model, res.preprocessor, syn.dataset)).image
    inner = (slice(2, -2), slice(2, -2))  # away from the scan's edges (clusters padded there)
    r_single, r_both = (np.corrcoef(img[inner].ravel(), odd[inner].ravel())[0, 1]
                        for img in (single, both))
    assert r_single > r_both + 0.2
    kept = runs["even"].train_summary["mirror_average"]
    assert kept["kept"] and kept["r_mirrored"] >= kept["r_members"]
    assert runs["even"].model.mirror_average and runs["even"].model_config.mirror_average


@pytest.mark.slow
def test_uncertainty_is_larger_off_the_training_distribution(tmp_path):
    """Three CNNs trained on one kind of synthetic data agree there and disagree on data made
    with another probe, detector and dose; the ensemble's spread says so, pixel by pixel on
    average, and survives a checkpoint round trip."""
    syn = make_synthetic(scan_shape=(40, 40), detector_shape=(24, 24), seed=0)
    cfg = EnsembleConfig(member=CNN4dConfig(cluster_size=5, channels=(4, 8), dropout=0.0), size=3)
    res = run_training(syn.dataset, syn.label, cfg, PreprocessConfig(compression="power"),
                       TrainConfig(epochs=6, lr=3e-3, batch_size=32, seed=1, num_threads=2,
                                   preview_every=0, device="cpu"))
    path = save_checkpoint(tmp_path / "ens.pt", res.model, res.model_config, res.preprocessor)
    loaded = load_checkpoint(path)
    same = make_synthetic(scan_shape=(40, 40), detector_shape=(24, 24), seed=5)
    other = make_synthetic(scan_shape=(40, 40), detector_shape=(24, 24), seed=5, bf_radius_px=3.5,
                           shift_gain=4.0, dose=300.0, probe_sigma=1.6)
    rec_in = _drain(iter_reconstruct(loaded.model, loaded.preprocessor, same.dataset))
    rec_out = _drain(iter_reconstruct(loaded.model, loaded.preprocessor, other.dataset))
    assert rec_in.uncertainty.shape == (40, 40) and np.isfinite(rec_in.uncertainty).all()
    # relative to each image's own contrast, the spread grows off the training distribution
    rel_in = np.median(rec_in.uncertainty) / rec_in.image.std()
    rel_out = np.median(rec_out.uncertainty) / rec_out.image.std()
    assert rel_out > 2 * rel_in
    np.testing.assert_allclose(rec_in.image, predict(res.model, res.preprocessor, same.dataset),
                               rtol=1e-4, atol=1e-4)


def test_linear_ensemble_reads_all_masks_in_one_pass():
    """A bootstrap ensemble of linear models: the raw-detector path (one virtual-image pass
    for every member's mask) equals the preprocessed path, mean and spread."""
    syn = make_synthetic(scan_shape=(24, 24), detector_shape=(16, 16), seed=0)
    counts = Dataset4D(np.rint(np.asarray(syn.dataset.data)).astype(np.uint16), syn.dataset.calibration)
    cfg = EnsembleConfig(member=LinearConfig(cluster_size=3), size=3)
    res = run_training(counts, syn.label, cfg, PreprocessConfig(), TrainConfig(epochs=1, preview_every=0))
    fast = _drain(iter_reconstruct(res.model, res.preprocessor, counts))
    floats = Dataset4D(np.asarray(counts.data, np.float32), counts.calibration)
    slow = _drain(iter_reconstruct(res.model, res.preprocessor, floats))
    assert fast.uncertainty is not None and float(fast.uncertainty.mean()) > 0
    np.testing.assert_allclose(fast.image, slow.image, rtol=1e-4, atol=1e-4 * np.abs(slow.image).max())
    np.testing.assert_allclose(fast.uncertainty, slow.uncertainty, rtol=1e-3,
                               atol=1e-4 * np.abs(slow.image).max())
