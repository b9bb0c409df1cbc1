"""Detector geometry: boundary convention, presets, calibration, serialisation."""

import math

import numpy as np
import pytest

from napari_4dstem_ml.dataset import Calibration
from napari_4dstem_ml.detectors.geometry import (
    Detector,
    DetectorError,
    annular_mask,
    masks_for,
    max_radius_px,
    presets,
)


def _brute_annulus(shape, cy, cx, inner, outer, sy=1.0, sx=1.0):
    m = np.zeros(shape, np.float64)
    for i in range(shape[0]):
        for j in range(shape[1]):
            r = math.sqrt(((i - cy) * sy) ** 2 + ((j - cx) * sx) ** 2)
            m[i, j] = 1.0 if inner <= r < outer else 0.0
    return m


def test_annulus_matches_brute_force_at_non_integer_centre():
    m = annular_mask((21, 23), (9.37, 11.81), 2.5, 7.2)
    assert m.dtype == np.float32 and m.shape == (21, 23)
    np.testing.assert_array_equal(m, _brute_annulus((21, 23), 9.37, 11.81, 2.5, 7.2))


def test_boundary_inner_inclusive_outer_exclusive():
    # centre on pixel (5, 5): pixel (5, 8) is at r = 3 exactly, (5, 9) at r = 4 exactly
    m = annular_mask((11, 11), (5.0, 5.0), 3.0, 4.0)
    assert m[5, 8] == 1.0  # r == inner: inside
    assert m[5, 9] == 0.0  # r == outer: outside
    assert m[5, 2] == 1.0 and m[5, 1] == 0.0
    assert m[5, 5] == 0.0  # centre pixel r = 0 < inner
    disk = annular_mask((11, 11), (5.0, 5.0), 0.0, 1.0)
    assert disk.sum() == 1.0  # only the centre pixel: neighbours at r == 1 are excluded


def test_mrad_detector_uses_calibration_per_axis():
    cal = Calibration(detector_pixel=(0.5, 0.8), detector_units="mrad")
    d = Detector("ADF", "annulus", 3.0, 9.0)
    m = d.to_mask((32, 30), (15.2, 14.7), cal)
    np.testing.assert_array_equal(m, _brute_annulus((32, 30), 15.2, 14.7, 3.0, 9.0, 0.5, 0.8))
    with pytest.raises(DetectorError):
        d.to_mask((32, 30), (15.2, 14.7))
    with pytest.raises(ValueError, match="detector pixel"):
        d.to_mask((32, 30), (15.2, 14.7), Calibration())
    assert d.radii_px(cal) == (6.0, 18.0)


def test_presets_and_clipping():
    p = presets(20.0, 70.0)
    assert (p["BF"].inner, p["BF"].outer) == (0.0, 20.0)
    assert (p["ABF"].inner, p["ABF"].outer) == (10.0, 20.0)
    assert (p["ADF"].inner, p["ADF"].outer) == (30.0, 70.0)  # 4α = 80 clipped to 70
    assert (p["HAADF"].inner, p["HAADF"].outer) == (60.0, 70.0)
    small = presets(20.0, 50.0)
    assert "HAADF" not in small and small["ADF"].outer == 50.0


def test_max_radius():
    assert max_radius_px((64, 64), (31.5, 31.5)) == 32.0
    assert max_radius_px((64, 64), (20.0, 40.0)) == 20.5


def test_detector_validation_and_json_round_trip():
    with pytest.raises(DetectorError):
        Detector("x", "ring")
    with pytest.raises(DetectorError):
        Detector("x", "annulus", 5.0, 2.0)
    with pytest.raises(DetectorError):
        Detector("x", "custom")
    d = Detector("HAADF", "annulus", 60.0, math.inf)
    assert Detector.from_dict(d.to_dict()) == d
    c = Detector("c", "custom", custom_mask=np.eye(4))
    c2 = Detector.from_dict(c.to_dict())
    np.testing.assert_array_equal(c2.custom_mask, np.eye(4, dtype=np.float32))
    with pytest.raises(DetectorError):
        c.to_mask((5, 5), (2, 2))
    stack = masks_for([Detector("a", "disk", 0, 2, "pixels"), c], (4, 4), (1.5, 1.5))
    assert stack.shape == (2, 4, 4)
