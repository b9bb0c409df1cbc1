"""The domain check: quiet on data like the training data, specific when it is not."""

from __future__ import annotations

import numpy as np
import pytest

from napari_4dstem_ml.dataset import Calibration, Dataset4D
from napari_4dstem_ml.domain import DataSignature, DomainIssue, TrainingDomain


def _dataset(alpha=20.0, px=1.0, energy=80e3, step=0.25, dose=1e4, df=0.05, det=64):
    """Patterns: a disk of radius α holding (1 - df) of the counts, the rest spread evenly
    from 1.2 α to the detector edge; no noise."""
    k = np.arange(det) - (det - 1) / 2
    r = np.hypot(k[:, None], k[None, :]) * px / alpha
    pat = np.where(r <= 1.0, 1.0, 0.0)
    pat = (1 - df) * pat / pat.sum()
    outer = (r > 1.25) & (r < 0.5 * det * px / alpha)
    pat = pat + df * outer / outer.sum()
    data = np.broadcast_to(pat * dose, (8, 8, det, det)).astype(np.float32)
    cal = Calibration(scan_step=(step, step), detector_pixel=(px, px), energy_ev=energy,
                      convergence_mrad=alpha)
    return Dataset4D(np.ascontiguousarray(data), cal)


def test_signature_measures_what_the_data_show():
    s = DataSignature.from_dataset(_dataset(alpha=20.0, px=0.8, dose=3e4, df=0.1))
    assert s.energy_kev == 80.0 and s.alpha_mrad == 20.0 and s.scan_step_A == 0.25
    assert s.detector_pixel_alpha == pytest.approx(0.04)
    assert s.dose == pytest.approx(3e4, rel=1e-3)
    assert s.dark_field_fraction == pytest.approx(0.1, rel=0.05)
    assert s.reach_alpha == pytest.approx(32 * 0.8 / 20, rel=0.05)


def test_quiet_inside_the_domain_and_specific_outside():
    train = [DataSignature.from_dataset(_dataset(dose=d, df=f)) for d, f in ((1e4, 0.04), (3e4, 0.08))]
    dom = TrainingDomain.from_signatures(train)
    same = DataSignature.from_dataset(_dataset(dose=2e4, df=0.06))
    assert dom.check(same) == []
    other = DataSignature.from_dataset(_dataset(energy=300e3, step=0.41, df=0.3, dose=2e4))
    issues = {i.quantity: i for i in dom.check(other)}
    assert set(issues) == {"energy_kev", "scan_step_A", "scan_step_probe", "dark_field_fraction"}
    msg = issues["energy_kev"].message()
    assert "beam energy 300 keV" in msg and "3.8× above" in msg and "(80 keV)" in msg
    assert issues["scan_step_A"].factor == pytest.approx(0.41 / 0.25)
    # a detector that does not reach the model's grid
    short = DataSignature.from_dataset(_dataset(px=0.82, dose=2e4, df=0.06))
    assert [i.quantity for i in dom.check(short, model_reach_alpha=1.5)] == ["reach_alpha"]


def test_domain_round_trips_and_unions():
    a = TrainingDomain.from_signatures([DataSignature.from_dataset(_dataset())], dose_range=(5e3, 5e5))
    assert a.ranges["dose"] == (5e3, 5e5)
    b = TrainingDomain.from_signatures([DataSignature.from_dataset(_dataset(energy=300e3))])
    u = a.union(b)
    assert u.ranges["energy_kev"] == (80.0, 300.0) and u.n_datasets == 2
    assert TrainingDomain.from_dict(u.to_dict()) == u
    assert TrainingDomain.from_dict({"ranges": {"energy_kev": [5, 1], "bogus": [1, 2]}}).ranges == {}


def test_zero_value_outside_the_range_says_so_without_an_infinite_ratio():
    issue = DomainIssue("dose", 0.0, 100.0, 200.0)
    msg = issue.message()
    assert "inf" not in msg and "0 e⁻ is outside the training range (100–200 e⁻)" in msg


def test_scan_step_in_units_of_the_probe_size():
    """step / (λ/α) against a hand computation: 80 keV, λ = 0.04176 Å, α 20 mrad, 0.25 Å."""
    import math

    from napari_4dstem_ml.dataset import Calibration, Dataset4D

    lam = 12.2643 / math.sqrt(80e3 * (1 + 0.97848e-6 * 80e3))  # Å, relativistic
    data = np.random.default_rng(0).poisson(5.0, (8, 8, 32, 32)).astype(np.float32)
    yy, xx = np.mgrid[:32, :32]
    data[..., np.hypot(yy - 15.5, xx - 15.5) < 6] += 200.0
    cal = Calibration(scan_step=(0.25, 0.25), detector_pixel=(20 / 6, 20 / 6),
                      energy_ev=80e3, convergence_mrad=20.0)
    sig = DataSignature.from_dataset(Dataset4D(data, cal))
    assert sig.scan_step_probe == pytest.approx(0.25 / (lam / 0.020), rel=1e-3)
    dom = TrainingDomain.from_signatures([sig])
    far = DataSignature.from_dict({**sig.to_dict(), "scan_step_probe": sig.scan_step_probe * 1.5})
    assert [i.quantity for i in dom.check(far)] == ["scan_step_probe"]


def test_only_a_lower_dose_is_outside_the_domain():
    dom = TrainingDomain.from_signatures([DataSignature.from_dataset(_dataset(dose=1e4))])
    assert dom.check(DataSignature.from_dataset(_dataset(dose=1e5))) == []
    low = dom.check(DataSignature.from_dataset(_dataset(dose=2e3)))
    assert [i.quantity for i in low] == ["dose"] and "below" in low[0].message()
