"""Ptychographic label reconstruction (napari_4dstem_ml.ptycho, extra [ptycho]).

The end-to-end tests reconstruct a small crop of the bundled MoS2 sample (abTEM multislice,
Poisson noise) with quantem and judge the label against the sample's exact projected potential
(abTEM's, an independent reference), its geometry by where that potential's atoms land.
"""

from __future__ import annotations

import dataclasses
import json
import math
from importlib.metadata import version

import h5py
import numpy as np
import pytest

from napari_4dstem_ml.cli import main
from napari_4dstem_ml.dataset import electron_wavelength_A
from napari_4dstem_ml.ptycho import (
    ObjectGeometry,
    PtychoConfig,
    PtychoEvent,
    PtychoLabel,
    TrainingLabel,
    label_job,
    reconstruct_label,
)
from napari_4dstem_ml.ptycho.backends import geometry_from_positions
from napari_4dstem_ml.ptycho.quality import (
    crop_to_scan,
    depth_of_field_A,
    on_scan_grid,
    transfer_limit_A,
    trust_warnings,
)

#: a small, fast reconstruction: 16 x 16 positions, 32 x 32 binned patterns padded to 64
SMALL = PtychoConfig(iterations=3, bin_factor=4, padded_size=64, batch_size=64)
CROP = (slice(8, 24), slice(8, 24))


# ------------------------------------------------------------------------------ pure parts
def test_config_json_round_trip_and_validation():
    c = PtychoConfig(mode="multislice", slices=4, slice_thickness_A=5.0, iterations=3,
                     rotation_deg=None)
    assert PtychoConfig.from_json(c.to_json()) == c
    with pytest.raises(ValueError, match="slice_thickness_A"):
        PtychoConfig(mode="multislice", slices=4)
    with pytest.raises(ValueError, match="one slice"):
        PtychoConfig(slices=2)
    with pytest.raises(ValueError, match="iterations"):
        PtychoConfig(iterations=0)
    with pytest.raises(ValueError, match="unknown"):
        PtychoConfig.from_dict({"iterations": 2, "colour": "red"})


def test_geometry_from_a_raster_of_positions():
    # probe centres of a 5 x 7 raster at 1.25 object px per scan step, first one at (30, 31)
    iy, ix = np.mgrid[0:5, 0:7]
    mask = (iy + ix) % 2 == 0
    pos = np.stack([30 + 1.25 * iy[mask], 31 + 1.25 * ix[mask]], 1)
    g = geometry_from_positions(pos, mask, 0.2)
    np.testing.assert_allclose(g.scan_to_pixel, [[1.25, 0, 30], [0, 1.25, 31]], atol=1e-9)
    np.testing.assert_allclose(g.origin_A, (-30 * 0.2, -31 * 0.2))
    with pytest.raises(ValueError, match="raster"):
        geometry_from_positions(pos + np.random.default_rng(0).normal(0, 0.5, pos.shape), mask, 0.2)


def test_on_scan_grid_samples_the_object_at_the_probe_positions():
    # an analytic object phase sampled on the object grid; resampled at the scan positions it
    # must equal the function evaluated there (positions 1.3 px apart, offset (20.5, 18))
    yy, xx = np.mgrid[0:90, 0:90].astype(float)

    def f(r, c):
        return np.sin(2 * np.pi * r / 17.0) * np.cos(2 * np.pi * c / 23.0)

    g = ObjectGeometry(0.1, ((1.3, 0.0, 20.5), (0.0, 1.3, 18.0)), (-2.05, -1.8))
    got = on_scan_grid(f(yy, xx), g, (40, 45))
    sy, sx = np.mgrid[0:40, 0:45].astype(float)
    np.testing.assert_allclose(got, f(20.5 + 1.3 * sy, 18 + 1.3 * sx), atol=2e-3)
    # cut to the scanned field (+ 1 Å): the same positions sample the same values
    cut, g2 = crop_to_scan(f(yy, xx), g, (40, 45))
    assert cut.shape == (int(39 * 1.3 + 20) + 1, int(44 * 1.3 + 20) + 1)
    assert g2.origin_A == pytest.approx((-2.05 + 11 * 0.1, -1.8 + 8 * 0.1))
    np.testing.assert_allclose(on_scan_grid(cut, g2, (40, 45)), got, atol=1e-6)


def test_physical_limits_and_trust_warnings():
    lam = electron_wavelength_A(80e3)
    assert math.isclose(depth_of_field_A(80e3, 21.4), lam / 0.0214**2)
    assert 85 < depth_of_field_A(80e3, 21.4) < 95  # 0.0418 Å / (21.4 mrad)^2
    assert math.isclose(transfer_limit_A(80e3, 21.4, 53.8), lam / 0.0752)
    quiet = dict(slices=1, slice_thickness_A=None, dof_A=91.0, phase_range=1.0,
                 df_fraction=0.02, frc_result=None)
    assert trust_warnings(mode="single-slice", sample_thickness_A=6.0, **quiet) == ()
    w = trust_warnings(mode="single-slice", sample_thickness_A=210.0, **quiet)
    assert len(w) == 1 and "depth of field" in w[0] and "multislice" in w[0]
    assert trust_warnings(mode="single-slice", sample_thickness_A=None,
                          **{**quiet, "phase_range": 4.0})
    assert trust_warnings(mode="single-slice", sample_thickness_A=None,
                          **{**quiet, "df_fraction": 0.6})


# ------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def crop(tmp_path_factory):
    """A 16 x 16 crop of the MoS2 sample as a file of its own (4D data with this project's
    calibration attributes, and the ground-truth potential on its scan grid)."""
    pytest.importorskip("quantem", reason="needs the [ptycho] extra")
    from napari_4dstem_ml.samples import load_sample

    s = load_sample("mos2")
    data = np.asarray(s.dataset.data[CROP])
    cal = s.dataset.calibration
    path = tmp_path_factory.mktemp("ptycho") / "mos2_crop.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("datacube/data", data=data)
        d.attrs["scan_step_A"] = np.asarray(cal.scan_step_A)
        d.attrs["detector_pixel_mrad"] = np.asarray(cal.detector_pixel_mrad)
        d.attrs["energy_ev"] = cal.energy_ev
        d.attrs["convergence_mrad"] = cal.convergence_mrad
        f["ground_truth/potential"] = s.ground_truth[CROP]
    ds = dataclasses.replace(s.dataset, data=data, source=path)
    return path, ds, s.ground_truth[CROP]


def _run(gen):
    events, label = [], None
    for ev in gen:
        if isinstance(ev, PtychoLabel):
            label = ev
        else:
            events.append(ev)
    return events, label


@pytest.mark.slow
def test_reconstructs_a_label_that_matches_the_truth(crop, tmp_path):
    path, ds, truth = crop
    out = tmp_path / "label.h5"
    # the GUI's job: reconstruct_label's events, training_label's messages, a TrainingLabel
    events, label, msgs, ready = [], None, [], None
    for ev in label_job(ds, SMALL, out, ground_truth=truth):
        if isinstance(ev, PtychoLabel):
            label = ev
        elif isinstance(ev, TrainingLabel):
            ready = ev
        elif isinstance(ev, PtychoEvent):
            events.append(ev)
        else:
            msgs.append(ev.text)
    assert ready is not None and ready.label is label
    # progress: every part's iterations in order, the work done rising to the total, an ETA
    its = [(e.stage, e.iteration) for e in events if e.stage in ("full", "half A", "half B")
           and e.iteration]
    assert its == [(p, i) for p in ("full", "half A", "half B") for i in (1, 2, 3)]
    done = [e.done for e in events if e.iteration]
    assert done == sorted(done) and done[-1] == pytest.approx(6.0)
    assert all(e.eta_s is not None and e.eta_s >= 0 for e in events if e.iteration)
    # object pixel: λ / (padded size · binned detector pixel)
    kpix = ds.calibration.detector_pixel_mrad[0] * 4e-3
    assert label.geometry.pixel_size_A == pytest.approx(electron_wavelength_A(80e3) / (64 * kpix), rel=1e-4)
    # against abTEM's exact potential: correlated, and in the right place (no shift)
    q = label.quality
    assert q.truth is not None and q.truth.r_at_resolution > 0.6, q.truth
    assert max(abs(v) for v in q.truth.shift_px) <= 0.5, q.truth
    assert q.frc is not None and q.frc.r > 0.8
    assert q.warnings == ()  # a monolayer at 80 keV: nothing suspicious
    assert not out.with_name(out.name + ".resume.pt").exists()
    # the file: phase with pixel size, origin and provenance, readable as a label
    from napari_4dstem_ml.registration import load_label

    lab = load_label(out)
    np.testing.assert_array_equal(lab.image, label.phase)
    assert lab.pixel_size_A == pytest.approx(label.geometry.pixel_size_A)
    with h5py.File(out) as f:
        a = f["label/image"].attrs
        assert a["backend"] == "quantem" and a["backend_version"] == version("quantem")
        assert PtychoConfig.from_json(a["config"]) == SMALL
        np.testing.assert_allclose(a["origin_A"], label.geometry.origin_A)
        assert json.loads(a["quality"])["truth"]["r_at_resolution"] == pytest.approx(q.truth.r_at_resolution)
        np.testing.assert_allclose(f["label/on_scan_grid"][()], label.on_scan)
    # offered for training on the same scan, placed by its own geometry; the registration's
    # check runs (on this 3.8 Å field a free fit is ambiguous: it must then say so)
    image, coverage, summary = ready.image, ready.coverage, ready.summary
    np.testing.assert_array_equal(image, label.on_scan)
    assert coverage.all() and summary["registered"] is False
    off = summary["check"]["shift_difference_steps"] > 1.0
    assert off == any("scan steps" in m and m.startswith("warning") for m in msgs), msgs


@pytest.mark.slow
def test_cancel_then_resume_continues_where_it_stopped(crop, tmp_path):
    _, ds, _ = crop
    cfg = SMALL.with_(half_data_frc=False, iterations=2)
    _, ref = _run(reconstruct_label(ds, cfg))  # uninterrupted, in memory
    out = tmp_path / "label.h5"
    state = out.with_name("label.h5.resume.pt")
    n = {"steps": 0}

    def cancel():
        return n["steps"] >= 1

    events = []
    for ev in reconstruct_label(ds, cfg, out, cancel=cancel):
        events.append(ev)
        if isinstance(ev, PtychoEvent) and ev.iteration:
            n["steps"] += 1
    assert events[-1].stage == "cancelled" and events[-1].iteration == 1
    assert state.exists() and not out.exists()
    events, label = _run(reconstruct_label(ds, cfg, out))
    assert [e.iteration for e in events if e.stage == "full" and e.iteration] == [2]
    np.testing.assert_allclose(label.losses, ref.losses, rtol=1e-5)
    np.testing.assert_allclose(label.phase, ref.phase, atol=1e-4)
    assert out.exists() and not state.exists()
    # a state saved with other settings is refused, naming the setting
    other = tmp_path / "b.h5"
    n["steps"] = 0
    for ev in reconstruct_label(ds, cfg, other, cancel=cancel):
        n["steps"] += bool(isinstance(ev, PtychoEvent) and ev.iteration)
    assert other.with_name("b.h5.resume.pt").exists()
    with pytest.raises(ValueError, match="bin_factor"):
        _run(reconstruct_label(ds, cfg.with_(bin_factor=2), tmp_path / "b.h5"))


@pytest.mark.slow
def test_cli_ptycho(crop, tmp_path, capsys):
    path, _, _ = crop
    out = tmp_path / "label.h5"
    # multislice here (single-slice is the test above): 2 slices of 3 Å
    args = [str(path), "-o", str(out), "--iterations", "2", "--bin", "4", "--pad", "64",
            "--batch", "64", "--no-frc", "--ground-truth", str(path), "--mode", "multislice",
            "--slices", "2", "--slice-thickness", "3"]
    assert main(["ptycho", *args]) == 0
    text = capsys.readouterr().out
    assert "r against the ground truth" in text and "multislice, 2 slices of 3 Å" in text
    with h5py.File(out) as f:
        cfg = PtychoConfig.from_json(f["label/image"].attrs["config"])
        assert (cfg.mode, cfg.slices, cfg.slice_thickness_A) == ("multislice", 2, 3.0)
        truth_r = json.loads(f["label/image"].attrs["quality"])["truth"]["r_at_resolution"]
    assert truth_r > 0.5
    assert not out.with_name("label.h5.resume.pt").exists()
    # an existing output is refused (exit 2), untouched
    before = out.read_bytes()
    assert main(["ptycho", *args]) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == before
    # a missing calibration names the option that gives it
    bare = tmp_path / "bare.h5"
    with h5py.File(path) as src, h5py.File(bare, "w") as dst:
        d = dst.create_dataset("data", data=src["datacube/data"][()])
        for k in ("scan_step_A", "detector_pixel_mrad", "energy_ev"):
            d.attrs[k] = src["datacube/data"].attrs[k]
    assert main(["ptycho", str(bare), "-o", str(tmp_path / "x.h5")]) == 2
    err = capsys.readouterr().err
    assert "--convergence" in err and not (tmp_path / "x.h5").exists()
    # multislice without its slices is a usage error
    assert main(["ptycho", str(path), "-o", str(tmp_path / "y.h5"), "--mode", "multislice"]) == 2
