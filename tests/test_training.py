"""The training generator on synthetic data with a known answer."""

from __future__ import annotations

import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_4dstem_ml.models import CNN4dConfig, LinearConfig  # noqa: E402
from napari_4dstem_ml.predict import predict  # noqa: E402
from napari_4dstem_ml.preprocess import PreprocessConfig  # noqa: E402
from napari_4dstem_ml.training.clusters import PatternSource, RegionSplit, cluster_indices  # noqa: E402
from napari_4dstem_ml.training.loop import (  # noqa: E402
    DoneEvent,
    EpochEvent,
    PrepareEvent,
    PreviewEvent,
    StepEvent,
    TrainConfig,
    TrainError,
    run_training,
    train,
)
from napari_4dstem_ml.training.synthetic import make_synthetic  # noqa: E402


@pytest.fixture(scope="module")
def syn():
    return make_synthetic(scan_shape=(48, 48), detector_shape=(32, 32), seed=0)


def _val_baseline(syn, k):
    """Validation MSE of predicting the training mean (standardised units)."""
    lab = syn.label
    tr, va = RegionSplit().positions(lab.shape, k)
    m, s = lab[tr].mean(), lab[tr].std()
    return float(np.mean(((lab[va] - m) / s) ** 2)), va


def _r(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def test_linear_model_learns_the_synthetic_potential(syn):
    """Adam alone (no least-squares start) learns the potential."""
    cfg = TrainConfig(epochs=10, lr=0.01, batch_size=32, num_threads=1, preview_every=0,
                      linear_init="none")
    res = run_training(syn.dataset, syn.label, LinearConfig(cluster_size=5), PreprocessConfig(), cfg)
    baseline, va = _val_baseline(syn, 5)
    assert res.best_val_loss * 3 < baseline
    assert res.best_val_loss * 3 < res.history[0]["val_loss"]
    img = predict(res.model, res.preprocessor, syn.dataset)
    assert _r(img[va], syn.truth[va]) > 0.9
    assert res.metrics["pearson_r"] > 0.9
    # predictions come back in label units
    assert abs(img[va].mean() - syn.label[va].mean()) < 0.1 * syn.label.std()
    # the returned weights are the best-validation ones
    best = min(h["val_loss"] for h in res.history)
    assert res.best_val_loss == best
    assert res.history[res.best_epoch]["val_loss"] == best


def test_cnn_learns_the_synthetic_potential(syn):
    cfg = TrainConfig(epochs=4, lr=3e-3, batch_size=32, num_threads=1, preview_every=0)
    mc = CNN4dConfig(cluster_size=5, channels=(4, 8))
    res = run_training(syn.dataset, syn.label, mc, PreprocessConfig(), cfg)
    baseline, va = _val_baseline(syn, 5)
    assert res.best_val_loss * 3 < baseline
    img = predict(res.model, res.preprocessor, syn.dataset)
    assert _r(img[va], syn.truth[va]) > 0.9


def _small_run(syn, **kw):
    cfg = dict(epochs=2, lr=0.01, batch_size=16, num_threads=1, max_steps=12, preview_every=5,
               linear_init="none")
    cfg.update(kw)
    return train(syn.dataset, syn.label, LinearConfig(cluster_size=3), PreprocessConfig(), TrainConfig(**cfg))


def _drain(gen):
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return events, stop.value


def test_events_and_seeded_runs_are_identical(syn):
    ev1, res1 = _drain(_small_run(syn))
    ev2, res2 = _drain(_small_run(syn))
    _, res3 = _drain(_small_run(syn, seed=1))
    kinds = [type(e) for e in ev1]
    assert kinds[0] is PrepareEvent and kinds[-1] is DoneEvent and ev1[-1].result is res1
    steps = [e for e in ev1 if isinstance(e, StepEvent)]
    assert [s.step for s in steps] == list(range(1, 13))
    previews = [e for e in ev1 if isinstance(e, PreviewEvent)]
    assert [p.step for p in previews] == [5, 10]
    assert previews[0].image.shape == (48, 48) and np.isfinite(previews[0].image).all()
    assert set(previews[0].masks) == {"detector_mask", "cluster_weights"}
    assert previews[0].masks["cluster_weights"].shape == (3, 3)
    epochs = [e for e in ev1 if isinstance(e, EpochEvent)]
    assert len(epochs) == 1 and res1.stopped == "max_steps"
    assert set(epochs[0].metrics) >= {"pearson_r", "psnr"}
    assert [s.train_loss for s in steps] == [s.train_loss for s in ev2 if isinstance(s, StepEvent)]
    for k, v in res1.model.state_dict().items():
        assert torch.equal(v, res2.model.state_dict()[k])
    assert res1.history[0]["val_loss"] == res2.history[0]["val_loss"]
    assert res3.history[0]["val_loss"] != res1.history[0]["val_loss"]


def test_cancel_and_close(syn):
    threads = torch.get_num_threads()
    gen = _small_run(syn, max_steps=None, preview_every=0)
    n = 0
    for ev in gen:
        n += isinstance(ev, StepEvent)
        if n == 3:
            gen.close()
            break
    assert torch.get_num_threads() == threads
    flag = threading.Event()
    gen = train(
        syn.dataset, syn.label, LinearConfig(cluster_size=3), PreprocessConfig(),
        TrainConfig(epochs=5, batch_size=16, num_threads=1, preview_every=0, linear_init="none"),
        cancel=flag,
    )
    events = []
    for ev in gen:
        events.append(ev)
        if isinstance(ev, StepEvent) and ev.step == 4:
            flag.set()
    res = events[-1].result
    assert res.stopped == "cancelled" and res.steps == 4 and len(res.history) == 1


def test_training_never_mixes_train_and_validation_patterns(syn, monkeypatch):
    requested = []
    orig = PatternSource.clusters

    def spy(self, ys, xs, k):
        requested.extend(zip(np.asarray(ys).tolist(), np.asarray(xs).tolist()))
        return orig(self, ys, xs, k)

    monkeypatch.setattr(PatternSource, "clusters", spy)  # only training batches use clusters()
    _, res = _drain(_small_run(syn, preview_every=0, max_steps=30, epochs=1, batch_size=64,
                               sampling="clusters"))
    k, shape = 3, syn.label.shape
    tr, va = RegionSplit().positions(shape, k)
    req = np.array(requested)
    assert tr[req[:, 0], req[:, 1]].all()

    def members(ys, xs):
        ry, rx = cluster_indices(ys, xs, k, shape)
        return {(a, b) for yr, xr in zip(ry, rx) for a in yr for b in xr}

    assert not members(req[:, 0], req[:, 1]) & members(*np.nonzero(va))
    # the reported validation loss is forward() on exactly the validation clusters
    vy, vx = np.nonzero(va)
    x = orig(PatternSource(syn.dataset, res.preprocessor), vy, vx, k)
    with torch.no_grad():
        dev = next(res.model.parameters()).device  # the training device (CUDA when present)
        p = res.model(torch.from_numpy(x).to(dev)).cpu().numpy().astype(np.float64)
    t = res.preprocessor.label_to_model(syn.label[vy, vx])
    assert res.history[0]["val_loss"] == pytest.approx(np.mean((p - t) ** 2), rel=1e-4)
    # with a coverage mask, uncovered positions are never cluster centres
    mask = np.ones(shape, bool)
    mask[:, :3] = False
    requested.clear()
    gen = train(syn.dataset, syn.label, LinearConfig(cluster_size=3), PreprocessConfig(),
                TrainConfig(epochs=1, batch_size=64, num_threads=1, preview_every=0, max_steps=5,
                            sampling="clusters", linear_init="none"),
                label_mask=mask)
    _drain(gen)
    assert min(x for _, x in requested) >= 3


def test_least_squares_start_is_epoch_0_and_at_least_as_good_as_adam(syn):
    """With linear_init="als" the linear model is fitted directly (epoch 0, no optimiser
    steps); its validation loss is no worse than 10 epochs of Adam and it recovers the truth."""
    common = dict(epochs=10, lr=0.01, batch_size=32, num_threads=1, preview_every=0)
    adam = run_training(syn.dataset, syn.label, LinearConfig(cluster_size=5), PreprocessConfig(),
                        TrainConfig(linear_init="none", **common))
    events = []
    als = run_training(syn.dataset, syn.label, LinearConfig(cluster_size=5), PreprocessConfig(),
                       TrainConfig(linear_init="als", **common), on_event=events.append)
    first = next(e for e in events if isinstance(e, EpochEvent))
    assert first.epoch == 0 and first.step == 0 and first.lr == 0.0
    assert als.stopped == "least_squares" and als.steps == 0  # MSE: the fit is the answer
    assert als.history[0]["val_loss"] <= adam.best_val_loss * 1.02
    assert als.best_val_loss == min(h["val_loss"] for h in als.history)
    baseline, va = _val_baseline(syn, 5)
    assert als.best_val_loss * 3 < baseline
    img = predict(als.model, als.preprocessor, syn.dataset)
    assert _r(img[va], syn.truth[va]) > 0.9


@pytest.mark.parametrize(
    ("model_config", "sampling"),
    [
        (LinearConfig(cluster_size=3), "patches"),
        (LinearConfig(cluster_size=3), "clusters"),
        (CNN4dConfig(cluster_size=5, channels=(2, 2), dropout=0.5), "patches"),
    ],
)
def test_validation_patterns_never_change_training(syn, monkeypatch, model_config, sampling):
    """Replacing every pattern outside the training region by noise (after preprocessing)
    leaves the trained weights bit-for-bit unchanged."""
    orig_fill = PatternSource.fill_cache

    def run(perturb):
        def fill(self, *a, **kw):
            yield from orig_fill(self, *a, **kw)
            if perturb:
                tr, _ = RegionSplit().region_masks(self.scan_shape)
                noise = np.random.default_rng(5).normal(size=self.cache[~tr].shape) * 100
                self.cache[~tr] = noise.astype(np.float32)

        monkeypatch.setattr(PatternSource, "fill_cache", fill)
        # linear_init="none": this is about the gradient steps (the least-squares start has
        # its own no-leakage test in test_linear_solve.py)
        # on the CPU: bit-identical losses need deterministic arithmetic, which cuDNN's
        # convolution kernels do not promise
        cfg = TrainConfig(epochs=1, lr=0.01, batch_size=64, num_threads=1, preview_every=0,
                          max_steps=6, sampling=sampling, patch_size=6, schedule="none",
                          linear_init="none", device="cpu")
        gen = train(syn.dataset, syn.label, model_config, PreprocessConfig(), cfg)
        events, res = _drain(gen)
        return res, [e.train_loss for e in events if isinstance(e, StepEvent)]

    (res_a, loss_a), (res_b, loss_b) = run(False), run(True)
    assert res_a.train_summary["sampling"] == sampling
    assert loss_a == loss_b
    for name, v in res_a.model.state_dict().items():
        assert torch.equal(v, res_b.model.state_dict()[name]), name
    # the validation loss does see the perturbation (so the perturbation took effect)
    assert res_a.history[0]["val_loss"] != res_b.history[0]["val_loss"]


def test_patch_sampling_trains_on_exactly_the_training_positions(syn, monkeypatch):
    """With patches, the loss covers each training position once per epoch and nothing else;
    every patch window has the same size; positions per step follow patches_per_step."""
    import napari_4dstem_ml.training.loop as loop
    from napari_4dstem_ml.training.patches import Patch

    windows, kept = [], []
    orig_input, orig_kept = loop.patch_input, Patch.kept

    def spy_input(source, window, k, region):
        windows.append(window)
        return orig_input(source, window, k, region)

    def spy_kept(self, train_pos):
        m = orig_kept(self, train_pos)
        kept.append((self.window, m))
        return m

    monkeypatch.setattr(loop, "patch_input", spy_input)
    monkeypatch.setattr(Patch, "kept", spy_kept)
    mask = np.ones(syn.label.shape, bool)
    mask[:, :4] = False
    cfg = TrainConfig(epochs=1, batch_size=16, num_threads=1, preview_every=0, patch_size=5,
                      linear_init="none",
                      patches_per_step=3)
    events, res = _drain(train(syn.dataset, syn.label, LinearConfig(cluster_size=3),
                               PreprocessConfig(), cfg, label_mask=mask))
    tr, _ = RegionSplit().positions(syn.label.shape, 3, mask)
    assert [w for w, _ in kept] == windows
    count = np.zeros(tr.shape, int)
    for (y0, y1, x0, x1), m in kept:
        assert (y1 - y0, x1 - x0) == (5, 5) and 0 <= y0 and y1 <= 48 and 0 <= x0 and x1 <= 48
        count[y0:y1, x0:x1] += m
    np.testing.assert_array_equal(count, tr.astype(int))
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert sum(s.positions for s in steps) == tr.sum() == res.train_summary["positions_trained"]
    assert len(steps) == -(-len(windows) // 3)


def test_patch_outputs_equal_cluster_forward(syn):
    """At training positions, a patch's masked input gives exactly what forward() gives on the
    clusters (the zeroed patterns outside the training region feed only dropped outputs)."""
    from napari_4dstem_ml.models import build_model
    from napari_4dstem_ml.preprocess import Preprocessor
    from napari_4dstem_ml.training.patches import patch_input, patch_plan

    pre = Preprocessor.fit(syn.dataset, PreprocessConfig())
    src = PatternSource(syn.dataset, pre)
    for _ in src.fill_cache():
        pass
    k = 5
    tr_pos, _ = RegionSplit().positions(syn.label.shape, k)
    region = RegionSplit().region_masks(syn.label.shape)[0]
    torch.manual_seed(0)
    model = build_model(CNN4dConfig(cluster_size=k, channels=(2, 3)), tuple(pre.output_shape)).eval()
    plan = patch_plan(tr_pos, 9, np.random.default_rng(3))
    # patches on the scan edge and on the border with the validation region
    last = int(np.nonzero(tr_pos.any(1))[0][-1])
    picks = [p for p in plan if p.window[0] == 0 or p.cell[1] == last + 1][:4]
    assert picks
    for p in picks:
        y0, y1, x0, x1 = p.window
        tile = patch_input(src, p.window, k, region)
        assert tile.shape[:2] == (y1 - y0 + k - 1, x1 - x0 + k - 1)
        m = p.kept(tr_pos)
        ys, xs = np.nonzero(m)
        with torch.no_grad():
            out = model.predict_field(torch.from_numpy(tile)).numpy()[m]
            ref = model(torch.from_numpy(src.clusters(ys + y0, xs + x0, k))).numpy()
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_lazy_data_trains_like_eager(syn):
    da = pytest.importorskip("dask.array")
    from napari_4dstem_ml.dataset import Dataset4D

    lazy = Dataset4D(da.from_array(syn.dataset.data, chunks=(8, -1, -1, -1)), syn.dataset.calibration)
    cfg = TrainConfig(epochs=1, lr=0.01, batch_size=16, num_threads=1, preview_every=0, max_steps=8,
                      cache_budget_bytes=0)
    res_lazy = run_training(lazy, syn.label, LinearConfig(cluster_size=3), PreprocessConfig(), cfg)
    res_eager = run_training(syn.dataset, syn.label, LinearConfig(cluster_size=3), PreprocessConfig(), cfg)
    assert res_lazy.history[0]["val_loss"] == pytest.approx(res_eager.history[0]["val_loss"], rel=1e-4)


def test_bad_inputs(syn):
    with pytest.raises(TrainError, match="scan grid"):
        next(train(syn.dataset, syn.label[:10], LinearConfig(cluster_size=3)))
    empty = np.full(syn.label.shape, np.nan)
    with pytest.raises(TrainError, match="no training positions"):
        next(train(syn.dataset, empty, LinearConfig(cluster_size=3)))
    for bad in ({"loss": "huber"}, {"epochs": 0}, {"device": "tpu"}, {"lr": -1.0}):
        with pytest.raises(TrainError):
            TrainConfig(**bad)
    assert TrainConfig.from_dict(TrainConfig(epochs=3).to_dict()) == TrainConfig(epochs=3)


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_l2sp_keeps_fine_tuned_weights_near_the_initial_ones(syn, tmp_path):
    """Fine-tuning from a trained CNN: without the penalty the weights move; with a large
    L2-SP weight they stay within a small fraction of that move, and the training domain of
    the result covers both the initial model's data and the new data."""
    from dataclasses import replace

    cfg = TrainConfig(epochs=1, lr=3e-3, batch_size=16, num_threads=1, preview_every=0, seed=0,
                      steps_per_epoch=20)
    mcfg = CNN4dConfig(cluster_size=5, channels=(2, 2))
    first = run_training(syn.dataset, syn.label, mcfg, PreprocessConfig(), cfg)
    other = make_synthetic(scan_shape=(48, 48), detector_shape=(32, 32), seed=1,
                           energy_ev=200e3, spacing=7.0)
    w0 = _weights(first.model)
    free = run_training(other.dataset, other.label, mcfg, None, replace(cfg, l2sp=0.0),
                        init=first.model, preprocessor=first.preprocessor.adapt(other.dataset))
    held = run_training(other.dataset, other.label, mcfg, None, replace(cfg, l2sp=1e4),
                        init=first.model, preprocessor=first.preprocessor.adapt(other.dataset))
    moved_free = float((_weights(free.model) - w0).norm())
    moved_held = float((_weights(held.model) - w0).norm())
    assert moved_free > 0
    assert moved_held < 0.2 * moved_free
    # from a checkpoint, the training domain is the union of both trainings' domains
    from napari_4dstem_ml.training.checkpoint import load_checkpoint, save_checkpoint

    ck = load_checkpoint(save_checkpoint(tmp_path / "first.pt", first.model, first.model_config,
                                         first.preprocessor, train_summary=first.train_summary))
    tuned = run_training(other.dataset, other.label, mcfg, None, replace(cfg, l2sp=1.0),
                         init=ck, preprocessor=first.preprocessor.adapt(other.dataset))
    assert first.train_summary["domain"]["ranges"]["energy_kev"] == [80.0, 80.0]
    assert tuned.train_summary["domain"]["ranges"]["energy_kev"] == [80.0, 200.0]
    # and it keeps the initial model's pattern domain beside its own (a pattern is judged by
    # the nearest); a fine-tune left free of its base (no L2-SP) keeps none
    own = tuned.train_summary["pattern_domain"]
    assert own is not None and own != first.train_summary["pattern_domain"]
    assert tuned.train_summary["pattern_domains_kept"] == [first.train_summary["pattern_domain"]]
    free_ck = run_training(other.dataset, other.label, mcfg, None, replace(cfg, l2sp=0.0),
                           init=ck, preprocessor=first.preprocessor.adapt(other.dataset))
    assert free_ck.train_summary["pattern_domains_kept"] == []


def test_fine_tuning_job_uses_the_fine_tuning_defaults(tmp_path):
    from napari_4dstem_ml.training.checkpoint import save_checkpoint
    from napari_4dstem_ml.workflow import TRAINING_DEFAULTS, TrainingJob

    syn = make_synthetic(scan_shape=(24, 24), detector_shape=(16, 16), seed=2)
    mcfg = CNN4dConfig(cluster_size=5, channels=(2, 2))
    res = run_training(syn.dataset, syn.label, mcfg, PreprocessConfig(),
                       TrainConfig(epochs=1, batch_size=16, num_threads=1, preview_every=0,
                                   steps_per_epoch=2))
    ck = save_checkpoint(tmp_path / "m.pt", res.model, res.model_config, res.preprocessor,
                         train_summary=res.train_summary)
    job = TrainingJob(label="unused.tif", output=str(tmp_path / "o.pt"), model="conv4d",
                      init=str(ck))
    initial, (m, p, t) = job.prepare(syn.dataset)
    want = TRAINING_DEFAULTS["conv4d.base"]
    assert initial is not None and m == mcfg
    assert (t.epochs, t.lr, t.batch_size, t.l2sp, t.patience) == (
        want["epochs"], want["lr"], want["batch_size"], want["l2sp"], want["patience"])
    # the fine-tune runs every epoch (the best validation epoch kept), as the napari dock does:
    # early stopping made its outcome hang on how long a noisy plateau lasted
    assert t.patience is None
    scratch = TrainingJob(label="unused.tif", output=str(tmp_path / "o.pt"), model="conv4d",
                          init="scratch").prepare(syn.dataset)
    assert scratch[0] is None and scratch[1][2].l2sp == 0.0
    assert scratch[1][2].epochs == TRAINING_DEFAULTS["conv4d"]["epochs"]
    assert scratch[1][2].patience == TRAINING_DEFAULTS["conv4d"]["patience"] == 5


def test_early_stopping_keeps_the_best_epoch_and_says_so():
    """With ``patience`` p, training stops p epochs after the lowest validation loss, keeps that
    epoch's weights, and says so in words (epochs counted from 1, as the progress shows them)."""
    syn = make_synthetic(scan_shape=(24, 24), detector_shape=(16, 16), seed=2)
    res = run_training(syn.dataset, syn.label, CNN4dConfig(cluster_size=5, channels=(2, 2)),
                       PreprocessConfig(),
                       TrainConfig(epochs=30, batch_size=16, lr=0.05, num_threads=1,
                                   preview_every=0, steps_per_epoch=2, patience=2))
    losses = [h["val_loss"] for h in res.history]
    best = int(np.argmin(losses))
    assert res.stopped == "early_stopping" and len(losses) < 30
    assert len(losses) - 1 - best == 2  # exactly `patience` epochs without a better loss
    assert res.best_epoch == res.history[best]["epoch"] == best
    assert res.best_val_loss == losses[best]
    assert res.how_it_ended() == (f"stopped early after epoch {len(losses)}: no better "
                                  f"validation loss since epoch {best + 1}, which is kept")
