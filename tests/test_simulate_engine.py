"""The general simulator on tiny grids: file layout, defect placement, noise-free patterns and
Poisson counts, resume from the chunk cache (bit-identical), progress events, the exact
periodic speed-up against direct scanning, the anti-aliasing check and the cost estimate."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from napari_4dstem_ml.simulate.detector import DetectorModel
from napari_4dstem_ml.simulate.scene import SimulationConfig, fft_size, probe_radius_A
from napari_4dstem_ml.simulate.structures import Defect, StructureSpec

HAS_ABTEM = importlib.util.find_spec("abtem") is not None and importlib.util.find_spec("ase") is not None
needs_abtem = pytest.mark.skipif(
    not HAS_ABTEM, reason="abTEM/ASE not installed (optional extra: pip install 'napari-4dstem-ml[sim]')")

DET = DetectorModel(shape=(24, 24), pixel_mrad=2.5, centre_offset_px=(0.4, -0.3),
                    descan_y_px=(0.2, 0.0), descan_x_px=(0.0, 0.2))


VACANCY = (Defect("vacancy", "S", (0.7, 0.5), layer="column"),)


def tiny(defects=VACANCY, **kw) -> SimulationConfig:
    """MoS2, 80 keV, 7 x 6 positions at 0.45 A, a 24 x 24 detector: about a second."""
    args = dict(structure=StructureSpec("MoS2", defects=defects), scan_shape=(7, 6),
                scan_step_A=0.45, detector=DET, adf_inner_mrad=40.0, adf_outer_mrad=55.0,
                probe_tail_fraction=0.05, dose_e_per_pattern=2e4, seed=3, name="tiny")
    args.update(kw)
    return SimulationConfig(**args)


def run(cfg, out, **kw):
    from napari_4dstem_ml.simulate.engine import simulate

    return list(simulate(cfg, out, **kw))


def datasets(path) -> dict[str, np.ndarray]:
    import h5py

    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    return out


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "tiny.h5"
    events = run(tiny(), out, chunk_seconds=1e-4)  # one scan row per chunk
    return out, events


def test_config_json_round_trip_and_validation():
    cfg = tiny(tilt_mrad=(1.0, -2.0), rms_A=(("S", 0.07),))
    again = SimulationConfig.from_json(cfg.to_json())
    assert again == cfg and again.digest() == cfg.digest()
    assert cfg.replace(dose_e_per_pattern=5.0).digest() == cfg.digest()  # dose: noise only
    assert cfg.replace(defocus_A=5.0).digest() != cfg.digest()
    with pytest.raises(ValueError, match="dose_e_per_pattern"):
        tiny(dose_e_per_pattern=-1.0)
    with pytest.raises(ValueError, match="unknown parameter"):
        SimulationConfig.from_dict({"energy": 80e3})
    with pytest.raises(ValueError, match="not periodic"):
        tiny(method="periodic")


def test_probe_radius_and_fft_sizes():
    from scipy.special import j0, j1

    from napari_4dstem_ml.simulate.scene import airy_tail_radius

    for frac in (0.01, 0.05):
        v = 2 * np.pi * airy_tail_radius(frac)
        vv = np.linspace(v, 50 * v, 20000)
        assert (j0(vv) ** 2 + j1(vv) ** 2 <= frac * 1.0001).all()  # encircled-energy deficit
    # thickness and defocus add the geometric spread alpha * |z - defocus|
    r0 = probe_radius_A(80e3, 20.0, 0.0, 0.0)
    assert probe_radius_A(80e3, 20.0, 0.0, 100.0) == pytest.approx(r0 + 0.02 * 100.0)
    assert probe_radius_A(80e3, 20.0, 300.0, 100.0) == pytest.approx(r0 + 0.02 * 300.0)
    assert [fft_size(n) for n in (97, 121, 511, 1025)] == [98, 125, 512, 1029]


@needs_abtem
def test_file_layout_defect_and_noise(tiny_file):
    import h5py

    path, _ = tiny_file
    cfg = tiny()
    d = datasets(path)
    ny, nx = cfg.scan_shape
    assert d["datacube/data"].shape == (ny, nx, 24, 24) and d["datacube/data"].dtype == np.uint16
    nf = d["noise_free/patterns"]
    assert nf.shape == (ny, nx, 24, 24) and nf.dtype == np.float32
    for k in ("ground_truth/potential", "ground_truth/potential_lowpass_0.4A", "adf/image",
              "label/image"):
        assert d[k].shape == (ny, nx) and np.isfinite(d[k]).all(), k
    with h5py.File(path, "r") as f:
        assert SimulationConfig.from_json(f.attrs["simulation_config"]) == cfg
        assert f.attrs["c10_A"] == -f.attrs["defocus_A"]
        assert f.attrs["antialias_cutoff_mrad"] >= f.attrs["needed_angle_mrad"] - 1e-6
        assert f["datacube/data"].attrs["detector_pixel_mrad"][0] == DET.pixel_mrad
    # noise-free patterns: fractions of the beam, summing to the stored detected fraction <= 1
    det = nf.sum(axis=(-1, -2))
    np.testing.assert_allclose(det, d["noise_free/detected_fraction"], rtol=1e-5)
    assert det.max() <= 1.0 + 1e-4 and det.min() > 0.8
    # Poisson counts: mean = dose * fraction, variance = mean
    lam = nf.astype(np.float64) * cfg.dose_e_per_pattern
    c = d["datacube/data"].astype(np.float64)
    assert abs(c.sum() / lam.sum() - 1) < 5 / np.sqrt(lam.sum())
    m = lam > 20
    chi2 = ((c[m] - lam[m]) ** 2 / lam[m]).mean()
    assert abs(chi2 - 1) < 6 * np.sqrt(2 / m.sum())
    # the bright-field disk sits at the detector model's pattern centre
    mean = nf.mean((0, 1))
    w = mean * (mean > 0.5 * mean.max())
    yy, xx = np.indices(mean.shape)
    centre = ((w * yy).sum() / w.sum(), (w * xx).sum() / w.sum())
    np.testing.assert_allclose(centre, DET.centres_px((ny, nx)).mean((0, 1)), atol=0.3)


@needs_abtem
def test_defect_sits_at_the_requested_scan_position(tiny_file, tmp_path):
    """The recorded site is the S column nearest the requested fraction of the scan, and the
    ground truth differs from the perfect crystal's only there, by the column's potential."""
    path, _ = tiny_file
    perfect = tmp_path / "perfect.h5"
    run(tiny(defects=(), method="direct"), perfect)
    a, b = datasets(path), datasets(perfect)
    (row, col), = a["defects/sites"]
    ny, nx = tiny().scan_shape
    want = (0.7 * (ny - 1), 0.5 * (nx - 1))
    # nearest S column: within a / sqrt(3) of the target (triangular S sublattice)
    assert np.hypot(row - want[0], col - want[1]) * 0.45 <= 3.16 / np.sqrt(3) + 1e-6
    diff = b["ground_truth/potential_lowpass_0.4A"] - a["ground_truth/potential_lowpass_0.4A"]
    peak = np.unravel_index(np.argmax(diff), diff.shape)
    assert np.hypot(peak[0] - row, peak[1] - col) <= 0.75  # nearest scan pixel to the site
    assert diff.min() > -1e-3 * diff.max()  # nothing else changed
    # the multislice saw the vacancy: patterns differ most near it
    pd = np.abs(a["noise_free/patterns"] - b["noise_free/patterns"]).sum((-1, -2))
    near = np.unravel_index(np.argmax(pd), pd.shape)
    assert np.hypot(near[0] - row, near[1] - col) <= 2.0


@needs_abtem
def test_progress_events_count_the_work(tiny_file):
    from napari_4dstem_ml.simulate.scene import make_plan

    _, events = tiny_file
    plan = make_plan(tiny(), chunk_seconds=1e-4)
    assert plan.rows_per_chunk == 1 and plan.method == "direct"
    stages = [e.stage for e in events]
    assert stages[0] == "plan" and stages[-2:] == ["writing", "done"]
    assert events[0].eta_s > 0 and events[0].estimate_s == events[0].eta_s
    ms = [e for e in events if e.stage == "multislice"]
    assert len(ms) == plan.positions[0]  # one event per chunk of one row
    assert all(e.total == plan.total_units == plan.positions[0] * plan.positions[1] for e in events)
    assert [e.done for e in ms] == [(i + 1) * plan.positions[1] for i in range(len(ms))]
    assert all(e.eta_s is not None and e.eta_s >= 0 for e in ms) and ms[-1].eta_s == 0


@needs_abtem
def test_resume_after_cancel_is_bit_identical(tiny_file, tmp_path):
    from napari_4dstem_ml.simulate.engine import simulate

    ref, _ = tiny_file
    out = tmp_path / "resumed.h5"
    calls = {"n": 0}

    def cancel():  # let the first chunk run, cancel before the second
        calls["n"] += 1
        return calls["n"] > 1

    events = list(simulate(tiny(), out, cancel=cancel, chunk_seconds=1e-4))
    assert events[-1].stage == "cancelled" and not out.exists()
    parts = list((tmp_path / "resumed.h5.parts").rglob("*.npz"))
    assert len(parts) == 1
    events = list(simulate(tiny(), out, chunk_seconds=1e-4))
    assert events[-1].stage == "done" and not (tmp_path / "resumed.h5.parts").exists()
    a, b = datasets(ref), datasets(out)
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    # a finished file with the same configuration is not recomputed; another one is refused
    again = list(simulate(tiny(), out))
    assert len(again) == 1 and again[0].skipped
    with pytest.raises(FileExistsError, match="another simulation"):
        list(simulate(tiny(seed=4), out))


@needs_abtem
def test_periodic_interpolation_equals_direct_scanning(tmp_path):
    """The exact speed-up for perfect crystals: multislice inside one unit cell + periodic
    Fourier interpolation reproduces scanning every position (with tilt and defocus)."""
    base = SimulationConfig(structure=StructureSpec("SrTiO3", cells=2), energy_ev=300e3,
                            scan_shape=(5, 6), scan_step_A=0.55, detector=DET,
                            adf_inner_mrad=40.0, adf_outer_mrad=55.0, defocus_A=20.0,
                            tilt_mrad=(1.0, -0.5), source_fwhm_A=0.0, probe_tail_fraction=0.05,
                            seed=5)
    run(base.replace(method="periodic"), tmp_path / "p.h5")
    run(base.replace(method="direct"), tmp_path / "d.h5")
    p, d = datasets(tmp_path / "p.h5"), datasets(tmp_path / "d.h5")
    a, b = p["noise_free/patterns"], d["noise_free/patterns"]
    assert np.abs(a - b).max() < 1e-4 * a.max()
    np.testing.assert_allclose(p["ground_truth/potential_lowpass_0.4A"],
                               d["ground_truth/potential_lowpass_0.4A"], rtol=3e-3)


@needs_abtem
def test_grid_that_misses_the_detector_corners_is_refused(tmp_path, monkeypatch):
    from dataclasses import replace

    import napari_4dstem_ml.simulate.engine as engine
    from napari_4dstem_ml.simulate.scene import make_plan

    def coarse(config, crystal=None, chunk_seconds=20.0):
        p = make_plan(config, crystal, chunk_seconds)
        return replace(p, gpts=(p.gpts[0] // 2, p.gpts[1] // 2))

    monkeypatch.setattr(engine, "make_plan", coarse)
    with pytest.raises(ValueError, match="anti-aliasing cutoff"):
        run(tiny(), tmp_path / "coarse.h5")
    assert not (tmp_path / "coarse.h5").exists()


@needs_abtem
def test_estimate_grows_with_the_work():
    from napari_4dstem_ml.simulate.scene import estimate_seconds, make_plan

    thin = SimulationConfig(structure=StructureSpec("Cu", thickness_A=20.0), energy_ev=200e3,
                            detector=DET, frozen_phonons=2)
    thick = thin.replace(structure=StructureSpec("Cu", thickness_A=200.0))
    assert 0 < estimate_seconds(thin) < estimate_seconds(thick)
    p = make_plan(thick)
    assert p.method == "periodic" and p.configs == 2 and p.n_slices == 2 * p.repeats_z
    # positions in the cell sample finer than lambda / (4 alpha)
    lam = thick.wavelength_A
    assert p.cell_A[1] / p.positions[0] < lam / (4 * thick.convergence_mrad * 1e-3)
    # the box resolves the detector pixels and holds the probe twice over
    assert min(p.sim_pixel_mrad) <= DET.pixel_mrad * 1.0001
    assert min(p.extent_A) >= 2 * p.probe_radius_A
    json.dumps(p.to_dict())


@needs_abtem
def test_predicted_antialias_cutoff_is_abtems():
    import abtem

    from napari_4dstem_ml.simulate.scene import antialias_cutoff_mrad

    for extent, gpts, e in (((23.4, 31.7), (270, 361), 80e3), ((40.0, 40.0), (125, 128), 300e3),
                            ((17.3, 9.1), (99, 64), 60e3)):
        w = abtem.Probe(energy=e, semiangle_cutoff=20, extent=(extent[1], extent[0]),
                        gpts=(gpts[1], gpts[0]))
        lam = SimulationConfig(energy_ev=e).wavelength_A
        assert antialias_cutoff_mrad(extent, gpts, lam) == pytest.approx(min(w.cutoff_angles), rel=1e-6)
