"""The domain check on the patterns: features against a per-pattern reference, the fit on the
MoS2 sample (held-out patterns pass, a lower dose passes, PrScO3 and a rescaled α fire), the
JSON round trip, and the pattern domain written by training and read by the Reconstructor."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from napari_4dstem_ml.pattern_domain import (
    Features,
    PatternDomain,
    PatternGeometry,
    PatternVerdict,
    check_patterns,
    fit_pattern_domain,
    pattern_features,
    rings_for,
)


def _rows(f: Features, rows: slice) -> Features:
    """The features of scan rows ``rows`` only."""
    ny, nx = f.scan_shape
    sel = np.zeros((ny, nx), bool)
    sel[rows] = True
    sel = sel.ravel()
    return Features(f.x[sel], f.total[sel], f.gain, (int(sel.sum()), 1))


@pytest.fixture(scope="module")
def mos2():
    """MoS2 in memory and a pattern domain fitted on scan rows 0-23, thresholded on rows
    24-31; rows 32-63 (the lower half, with the unseen vacancy) are held out."""
    from napari_4dstem_ml.samples import load_sample

    sample = load_sample("mos2")
    data = np.asarray(sample.dataset.data)
    cal = sample.dataset.calibration
    geo = PatternGeometry.measure(data, cal)
    width, reach = rings_for([geo])
    geo = PatternGeometry(geo.centre, geo.radius_px, geo.shape, width, reach)
    f = pattern_features(data, geo)
    dom = fit_pattern_domain([_rows(f, slice(0, 24))], [_rows(f, slice(24, 32))],
                             bin_alpha=width, reach_alpha=reach)
    return SimpleNamespace(data=data, cal=cal, domain=dom, features=f, geo=geo)


def test_features_equal_a_per_pattern_radial_sum():
    """Every feature against a per-pattern numpy reference (bincount of the pixel radii and
    angles), on Poisson patterns with an off-centre disk."""
    rng = np.random.default_rng(4)
    ky = kx = 33
    cy, cx, rad = 16.3, 15.6, 6.0
    yy, xx = np.mgrid[:ky, :kx]
    r = np.hypot(yy - cy, xx - cx)
    mean = np.where(r < rad, 200.0, 20.0 * np.exp(-r / 10))
    data = rng.poisson(mean * rng.uniform(0.5, 1.5, (5, 6, 1, 1))).astype(np.uint16)
    geo = PatternGeometry((cy, cx), rad, (ky, kx), 0.125, 2.5)
    f = pattern_features(data, geo, gain=1.0)
    assert f.x.shape == (30, 20 + 6) and f.scan_shape == (5, 6)
    ring = np.floor(r / rad / 0.125).astype(int)
    th = np.arctan2(yy - cy, xx - cx)
    for n, p in enumerate(data.reshape(30, ky, kx).astype(np.float64)):
        t = p.sum()
        sums = np.bincount(ring.ravel(), weights=p.ravel(), minlength=40)[:20]
        np.testing.assert_allclose(f.x[n, :20], np.sqrt((sums + 0.375) / t), rtol=1e-6)
        ref = []
        for a, b in ((0.5, 1.0), (1.0, 1.5), (1.5, 2.5)):
            inring = (r / rad >= a) & (r / rad < b)
            for harmonic in (np.cos(2 * th), np.sin(2 * th)):
                plus, minus = p[inring & (harmonic >= 0)].sum(), p[inring & (harmonic < 0)].sum()
                ref.append((np.sqrt(plus + 0.375) - np.sqrt(minus + 0.375)) / np.sqrt(2 * t))
        np.testing.assert_allclose(f.x[n, 20:], ref, rtol=1e-6, atol=1e-9)
        assert f.total[n] == t


def test_gain_is_measured_from_the_checkerboard_halves():
    """Counts per electron of Poisson data scaled by 3 (structure varying over the scan)."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:40, :40]
    r = np.hypot(yy - 19.5, xx - 19.5)
    mean = np.where(r < 8, 100.0, 30 * np.exp(-r / 8))
    scale = rng.uniform(0.3, 2.0, (16, 16, 1, 1))
    data = 3.0 * rng.poisson(mean * scale)
    geo = PatternGeometry((19.5, 19.5), 8.0, (40, 40), 0.125, 2.25)
    assert pattern_features(data.astype(np.uint16), geo).gain == pytest.approx(3.0, rel=0.1)


def test_held_out_mos2_patterns_are_like_the_training_patterns(mos2):
    verdict = check_patterns(mos2.domain, mos2.data, mos2.cal)
    assert verdict.distance.shape == (64, 64) and verdict.distance.dtype == np.float32
    held_out = verdict.distance[32:]
    assert np.mean(held_out > 1) < 0.02 and np.median(held_out) < 0.7
    assert not verdict.fired and "like the training data" in verdict.message
    # every 2nd row and column (a cluster's quick map), repeated back to the scan's shape
    quick = check_patterns(mos2.domain, mos2.data, mos2.cal, max_positions=1024)
    assert quick.step == 2 and quick.distance.shape == (64, 64)
    # the same patterns; only the gain (counts per electron) is measured on fewer of them
    np.testing.assert_allclose(quick.distance[::2, ::2], verdict.distance[::2, ::2], rtol=0.02)
    np.testing.assert_array_equal(quick.distance[1::2, 1::2], quick.distance[::2, ::2])


def test_a_four_times_lower_dose_does_not_fire(mos2):
    low = np.random.default_rng(0).poisson(mos2.data[32:] / 4.0).astype(np.uint16)
    verdict = check_patterns(mos2.domain, low, mos2.cal)
    assert not verdict.fired and verdict.fraction < 0.02 and verdict.median < 0.7


def test_the_thick_prsco3_sample_fires(mos2):
    from napari_4dstem_ml.samples import load_sample

    p = load_sample("prsco3").dataset
    verdict = check_patterns(mos2.domain, p.data, p.calibration)
    assert verdict.fired and verdict.fraction > 0.9 and verdict.median > 2
    assert verdict.message.startswith("patterns unlike the training data at")
    assert "do not trust this image" in verdict.message


def test_patterns_of_another_alpha_under_the_old_calibration_fire(mos2):
    """The detector axes resampled by 1.4 (the disk 1.4× wider) while the calibration still
    claims the old α and pixel: the calibration check cannot see it, the patterns do."""
    from scipy.ndimage import zoom

    part = mos2.data[40:44].astype(np.float32)
    wide = zoom(part, (1, 1, 1.4, 1.4), order=1) / 1.96
    wide = np.random.default_rng(2).poisson(np.clip(wide, 0, None)).astype(np.uint16)
    verdict = check_patterns(mos2.domain, wide, mos2.cal)
    assert verdict.fired and verdict.fraction > 0.9


def test_json_round_trip(mos2):
    d = json.loads(json.dumps(mos2.domain.to_dict()))
    back = PatternDomain.from_dict(d)
    assert back == mos2.domain
    np.testing.assert_array_equal(back.raw_distance(mos2.features),
                                  mos2.domain.raw_distance(mos2.features))


def test_verdict_fires_above_a_tenth_of_the_positions():
    d = np.full((10, 10), 0.5, np.float32)
    d[:1] = 3.0
    assert not PatternVerdict.from_distance(d).fired  # 10 %: not more than a tenth
    d[1, 0] = np.nan  # unknown positions do not count
    d[1, 1] = 3.0
    v = PatternVerdict.from_distance(d)
    assert v.fired and v.fraction == pytest.approx(11 / 99)
    assert json.loads(json.dumps(v.to_dict()))["fired"] is True


def _run(loaded, dataset, **kwargs):
    from napari_4dstem_ml.predict import Message, Reconstructor

    gen, events = Reconstructor(loaded, dataset, **kwargs).run(), []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return stop.value, [e for e in events if isinstance(e, Message)]


@pytest.fixture(scope="module")
def trained():
    """A linear model trained in a few steps on a synthetic data set (upper half trains)."""
    torch = pytest.importorskip("torch")
    from napari_4dstem_ml.models import LinearConfig
    from napari_4dstem_ml.preprocess import PreprocessConfig
    from napari_4dstem_ml.training.loop import TrainConfig, run_training
    from napari_4dstem_ml.training.synthetic import make_synthetic

    torch.manual_seed(0)
    syn = make_synthetic((24, 28), (24, 24), seed=0)
    cfg = TrainConfig(epochs=1, lr=0.01, batch_size=64, num_threads=1, preview_every=0,
                      max_steps=3)
    res = run_training(syn.dataset, syn.label, LinearConfig(cluster_size=3), PreprocessConfig(), cfg)
    loaded = SimpleNamespace(model=res.model, preprocessor=res.preprocessor,
                             model_config=res.model_config,
                             info={"train_summary": json.loads(json.dumps(res.train_summary))})
    return syn, loaded


def test_training_writes_a_pattern_domain_and_the_reconstructor_reports_it(trained):
    syn, loaded = trained
    d = loaded.info["train_summary"]["pattern_domain"]
    assert d is not None and d["n_fit"] == 12 * 28 and d["n_val"] > 0
    report, messages = _run(loaded, syn.dataset)
    assert report.pattern is not None and report.pattern.distance.shape == (24, 28)
    assert not report.pattern.fired
    meta = json.loads(json.dumps(report.metadata()))
    assert meta["pattern_check"]["fired"] is False
    assert any(m.text == report.pattern.message and m.level == "info" for m in messages)
    # a checkpoint without a pattern domain (the shipped base models): a quiet note
    report, messages = _run(SimpleNamespace(**{**vars(loaded), "info": {}}), syn.dataset)
    assert report.pattern is None
    assert report.metadata()["pattern_check"]["checked"] is False
    note = [m for m in messages if "pattern domain" in m.text]
    assert len(note) == 1 and note[0].level == "info"


@pytest.mark.slow
def test_the_pattern_check_runs_beside_a_cluster(trained, tmp_path):
    """With the model on Dask workers the same map is measured (here in full: a small scan)."""
    from distributed import Client

    from napari_4dstem_ml.dataset import Dataset4D
    from napari_4dstem_ml.io import load

    syn, loaded = trained
    path = tmp_path / "data.npy"
    np.save(path, np.asarray(syn.dataset.data, np.float32))
    ds = Dataset4D(load(path).data, syn.dataset.calibration, source=path, reader="numpy")
    ref, _ = _run(loaded, ds)
    with Client(processes=False, n_workers=1, threads_per_worker=1,
                dashboard_address=None) as client:
        report, _ = _run(loaded, ds, client=client)
    assert report.pattern.step == 1
    np.testing.assert_allclose(report.pattern.distance, ref.pattern.distance, rtol=1e-6)


def test_stemml_predict_writes_the_distance_map_beside_the_image(trained, tmp_path, capsys):
    """The checkpoint (saved and read back) holds the pattern domain; ``stemml predict``
    prints the verdict and writes the map beside the image, both with it in their metadata."""
    import h5py
    import tifffile

    from napari_4dstem_ml.cli import main
    from napari_4dstem_ml.training.checkpoint import save_checkpoint

    syn, loaded = trained
    cal = syn.dataset.calibration
    with h5py.File(tmp_path / "data.h5", "w") as f:
        ds = f.create_dataset("scan/data", data=np.asarray(syn.dataset.data))
        ds.attrs["scan_step_A"] = list(cal.scan_step)
        ds.attrs["detector_pixel_mrad"] = list(cal.detector_pixel)
        ds.attrs["energy_ev"] = cal.energy_ev
        if cal.convergence_mrad:
            ds.attrs["convergence_mrad"] = cal.convergence_mrad
    model = save_checkpoint(tmp_path / "m.pt", loaded.model, loaded.model_config,
                            loaded.preprocessor, train_summary=loaded.info["train_summary"])
    capsys.readouterr()
    out = tmp_path / "pred.tif"
    assert main(["predict", str(tmp_path / "data.h5"), "--model", str(model), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "pattern check: patterns like the training data" in printed
    dist = tmp_path / "pred_pattern_distance.tif"
    assert dist.is_file()
    with tifffile.TiffFile(dist) as t:
        image = t.asarray()
        info = json.loads(t.imagej_metadata["Info"])
    assert image.shape == (24, 28) and np.mean(image > 1) < 0.05
    assert info["pattern_check"]["fired"] is False
    with tifffile.TiffFile(out) as t:
        assert json.loads(t.imagej_metadata["Info"])["pattern_check"] == info["pattern_check"]


def test_live_checks_the_patterns_of_the_first_rows(mos2):
    """Live, the verdict is made on the first block of rows: MoS2's held-out rows pass
    quietly, PrScO3 streamed to the same model is named in the pipeline's messages."""
    from napari_4dstem_ml.live import LivePipeline
    from napari_4dstem_ml.models import LinearConfig, build_model
    from napari_4dstem_ml.preprocess import PreprocessConfig, Preprocessor
    from napari_4dstem_ml.samples import load_sample

    info = {"train_summary": {"pattern_domain": mos2.domain.to_dict()}}
    ds = load_sample("mos2").dataset
    pre = Preprocessor.fit(ds, PreprocessConfig(angle_units="alpha", max_angle=2.0,
                                                output_shape=(16, 16)))
    model = build_model(LinearConfig(cluster_size=3), pre.output_shape).eval()

    def stream(data, cal):
        pipe = LivePipeline(data.shape[:2], data.shape[2:], model=model, preprocessor=pre,
                            calibration=cal, info=info)
        pipe.process(0, 8, np.asarray(data[:8]))
        return pipe

    quiet = stream(mos2.data[32:], mos2.cal)
    assert quiet.models["model"].pattern is not None
    assert not quiet.models["model"].pattern.fired and quiet.messages == []
    p = load_sample("prsco3").dataset
    loud = stream(np.asarray(p.data), p.calibration)
    assert loud.models["model"].pattern.fired
    assert any("patterns unlike the training data" in m for m in loud.messages)


def test_a_detector_that_ends_early_is_checked_on_the_rings_it_holds(mos2):
    """The marginal of the training model over the rings a smaller detector holds: MoS2's
    held-out rows cut to 1.9 α stay quiet, PrScO3 cut alike fires; the marginal equals the
    full distance when every feature is valid (an independent check of the algebra)."""
    from napari_4dstem_ml.samples import load_sample

    full = mos2.domain.raw_distance(_rows(mos2.features, slice(32, 64)))
    every = np.ones(len(mos2.domain.mean), bool)
    marg = mos2.domain._marginal_distance(_rows(mos2.features, slice(32, 64)), every)
    np.testing.assert_allclose(marg, full, rtol=1e-6)

    def cut(data, geo_centre, radius_px, reach):
        half = int(reach * radius_px)
        cy, cx = (int(round(c)) for c in geo_centre)
        return np.ascontiguousarray(data[:, :, cy - half:cy + half + 1, cx - half:cx + half + 1])

    small = cut(mos2.data[32:], mos2.geo.centre, mos2.geo.radius_px, 1.9)
    v = check_patterns(mos2.domain, small, mos2.cal)
    assert "partial check" in v.message and not v.fired and v.fraction < 0.05
    p = load_sample("prsco3").dataset
    pdata = np.asarray(p.data)
    pgeo = PatternGeometry.measure(pdata, p.calibration)
    vp = check_patterns(mos2.domain, cut(pdata, pgeo.centre, pgeo.radius_px, 1.9), p.calibration)
    assert vp.fired and "partial check" in vp.message
    with pytest.raises(ValueError, match="needs 1.50 α"):
        check_patterns(mos2.domain, cut(mos2.data[32:40], mos2.geo.centre, mos2.geo.radius_px, 1.2),
                       mos2.cal)


def test_verdict_details_share_one_bracket():
    """The check's details (nearest of several training sets, a partial check, sets left out)
    join the message's bracket instead of stacking "(…) (…) [...]"."""
    quiet = PatternVerdict.from_distance(np.full((4, 4), 0.5, np.float32))
    quiet.add_detail("the nearest of 16 training sets")
    quiet.add_detail("3 training sets where the model was not clearly better than ADF or iCoM left out")
    assert quiet.message == ("patterns like the training data (0 % of positions above the "
                             "threshold, median distance 0.5× the threshold; the nearest of 16 "
                             "training sets; 3 training sets where the model was not clearly "
                             "better than ADF or iCoM left out)")
    loud = PatternVerdict.from_distance(np.full((4, 4), 4.0, np.float32))
    loud.add_detail("the nearest of 2 training sets")
    loud.add_detail("partial check: the detector reaches 1.60 α")
    assert loud.fired and loud.message.endswith(
        "do not trust this image (the nearest of 2 training sets; partial check: the detector "
        "reaches 1.60 α)")
    assert loud.message.count("(") == 2  # the median distance's, and the details'
