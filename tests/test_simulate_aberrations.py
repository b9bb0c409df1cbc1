"""Astigmatism and scan jitter in the simulator: defaults keep older digests, the abTEM probe
gets C12/phi12, jittered positions are the nominal grid plus the stored errors, and the
custom-scan patterns come back in (row, col) order."""

from __future__ import annotations

import hashlib
import importlib.util
import json

import numpy as np
import pytest

from napari_4dstem_ml.simulate.detector import DetectorModel
from napari_4dstem_ml.simulate.scene import SimulationConfig, make_plan
from napari_4dstem_ml.simulate.structures import Defect, StructureSpec

HAS_ABTEM = importlib.util.find_spec("abtem") is not None and importlib.util.find_spec("ase") is not None
needs_abtem = pytest.mark.skipif(not HAS_ABTEM, reason="abTEM/ASE not installed")

DET = DetectorModel(shape=(24, 24), pixel_mrad=2.5)


def tiny(**kw) -> SimulationConfig:
    args = dict(structure=StructureSpec("MoS2", defects=(Defect("vacancy", "S", (0.5, 0.5)),)),
                scan_shape=(5, 4), scan_step_A=0.45, detector=DET, adf_inner_mrad=40.0,
                adf_outer_mrad=55.0, probe_tail_fraction=0.05, seed=3, name="tiny")
    args.update(kw)
    return SimulationConfig(**args)


def old_digest(cfg: SimulationConfig) -> str:
    """The digest formula before astigmatism and jitter existed (independent copy)."""
    skip = {"dose_e_per_pattern", "store_noise_free", "lowpass_resolution_A", "name",
            "astigmatism_A", "astigmatism_angle_deg", "scan_jitter_A"}
    d = {k: v for k, v in cfg.to_dict().items() if k not in skip}
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def test_defaults_keep_digest_and_new_values_change_it():
    cfg = tiny()
    assert cfg.digest() == old_digest(cfg)
    assert cfg.replace(astigmatism_A=10.0).digest() != cfg.digest()
    assert cfg.replace(scan_jitter_A=0.1).digest() != cfg.digest()
    again = SimulationConfig.from_json(cfg.replace(scan_jitter_A=0.1, astigmatism_A=5.0).to_json())
    assert again.scan_jitter_A == 0.1 and again.astigmatism_A == 5.0
    with pytest.raises(ValueError, match="scan_jitter_A"):
        tiny(scan_jitter_A=-0.1)
    with pytest.raises(ValueError, match="periodic"):
        tiny(structure=StructureSpec("MoS2"), method="periodic", scan_jitter_A=0.1)
    # a perfect crystal with jitter is scanned directly
    assert make_plan(tiny(structure=StructureSpec("MoS2"), scan_jitter_A=0.1)).method == "direct"


@needs_abtem
def test_astigmatic_probe_is_elongated_along_its_azimuth():
    import abtem

    from napari_4dstem_ml.simulate.engine import _aberrations

    def moments(cfg):
        p = abtem.Probe(energy=cfg.energy_ev, semiangle_cutoff=cfg.convergence_mrad,
                        defocus=cfg.defocus_A, extent=20.0, gpts=256, **_aberrations(cfg))
        i = np.abs(p.build().compute(progress_bar=False).array) ** 2  # (x, y)
        k = np.unravel_index(np.argmax(i), i.shape)
        i = np.roll(np.roll(i, 128 - k[0], 0), 128 - k[1], 1)
        x = (np.arange(256) - 128) * 20.0 / 256
        xx, yy = np.meshgrid(x, x, indexing="ij")
        i = i * (np.hypot(xx, yy) < 3.0)  # the central disc, not the Airy tails
        i /= i.sum()
        xx, yy = xx - (i * xx).sum(), yy - (i * yy).sum()
        return np.array([[(i * xx * xx).sum(), (i * xx * yy).sum()],
                         [(i * xx * yy).sum(), (i * yy * yy).sum()]])

    assert _aberrations(tiny()) == {}
    # at focus pure twofold astigmatism keeps isotropic second moments; with defocus the
    # probe becomes a line focus along one of the principal axes of C12
    m0 = moments(tiny(defocus_A=20.0))
    assert abs(m0[0, 1]) < 1e-3 * m0[0, 0] and abs(m0[0, 0] - m0[1, 1]) < 1e-3 * m0[0, 0]
    for ang in (0.0, 45.0):
        m = moments(tiny(defocus_A=20.0, astigmatism_A=20.0, astigmatism_angle_deg=ang))
        w, v = np.linalg.eigh(m)
        assert w[1] > 1.3 * w[0]  # elongated
        # principal axes at 0 or 90 deg for phi12 = 0, at +-45 deg for phi12 = 45 deg
        axis = np.degrees(np.arctan2(v[1, 1], v[0, 1])) % 90.0
        expect = 0.0 if ang == 0.0 else 45.0
        assert min(abs(axis - expect), 90 - abs(axis - expect)) < 2.0


@needs_abtem
def test_jittered_positions_and_custom_scan_order():
    import abtem

    from napari_4dstem_ml.simulate.engine import _Detectors, _scan, scan_jitter_A
    from napari_4dstem_ml.simulate.multislice import scan_patterns
    from napari_4dstem_ml.simulate.structures import build_unit_cell

    cfg = tiny(scan_jitter_A=0.1, source_fwhm_A=0.0)
    plan = make_plan(cfg)
    ref, shape0 = _scan(make_plan(cfg.replace(scan_jitter_A=0.0)),
                        cfg.replace(scan_jitter_A=0.0), 0, plan.positions[0])
    assert shape0 is None
    nominal = np.asarray(ref.get_positions())  # GridScan: (nx, ny, 2) as (x, y)
    jit = scan_jitter_A(cfg, plan)
    assert jit.shape == (*plan.positions, 2)
    assert 0.05 < jit.std() < 0.15
    scan, shape = _scan(plan, cfg, 1, 4)
    assert shape == (3, plan.positions[1])
    pos = np.asarray(scan.get_positions()).reshape(3, plan.positions[1], 2)
    np.testing.assert_allclose(pos[..., 0], nominal[:, 1:4, 0].T + jit[1:4, :, 1], atol=1e-5)
    np.testing.assert_allclose(pos[..., 1], nominal[:, 1:4, 1].T + jit[1:4, :, 0], atol=1e-5)

    from napari_4dstem_ml.simulate.engine import _box_atoms
    atoms, _ = _box_atoms(cfg, plan, build_unit_cell(cfg.structure))
    pot = abtem.Potential(atoms, gpts=(plan.gpts[1], plan.gpts[0]), slice_thickness=plan.slice_thickness_A,
                          projection="infinite", parametrization="lobato", periodic=True)
    pot = pot.build().compute(progress_bar=False)
    probe = abtem.Probe(energy=cfg.energy_ev, semiangle_cutoff=cfg.convergence_mrad)
    probe.grid.match(pot)
    pats, adf, _ = scan_patterns(probe, pot, scan, _Detectors(cfg), plan.pattern_mrad, shape=shape)
    assert pats.shape[:2] == shape and adf.shape == shape
    for r, c in [(0, 0), (2, 1), (1, plan.positions[1] - 1)]:
        one = abtem.CustomScan(pos[r, c][None])
        p1, a1, _ = scan_patterns(probe, pot, one, _Detectors(cfg), plan.pattern_mrad, shape=(1, 1))
        np.testing.assert_allclose(pats[r, c], p1[0, 0], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(adf[r, c], a1[0, 0], rtol=1e-4)


@needs_abtem
def test_simulate_writes_the_position_errors(tmp_path):
    import h5py

    from napari_4dstem_ml.simulate.engine import scan_jitter_A, simulate

    cfg = tiny(scan_jitter_A=0.1, astigmatism_A=10.0, astigmatism_angle_deg=30.0, defocus_A=20.0)
    out = tmp_path / "j.h5"
    events = list(simulate(cfg, out))
    assert events[-1].stage == "done"
    plan = make_plan(cfg)
    m = plan.margin_px
    with h5py.File(out, "r") as f:
        err = f["scan/position_errors_A"][()]
        cfg_back = SimulationConfig.from_json(str(f.attrs["simulation_config"]))
    assert cfg_back == cfg
    np.testing.assert_allclose(err, scan_jitter_A(cfg, plan)[m:m + 5, m:m + 4], rtol=1e-6)
    assert list(simulate(cfg, out))[-1].skipped  # the same configuration is not recomputed
