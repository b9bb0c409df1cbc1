"""Centre of mass, rotation and Fourier integration against synthetic known answers."""

import numpy as np
import pytest

from napari_4dstem_ml.dataset import Calibration
from napari_4dstem_ml.detectors.com import (
    center_of_mass,
    com_masks,
    find_scan_rotation,
    integrate_com,
    rotate_com,
)


def _disk(shape, cy, cx, r, o=6):
    sub = (np.arange(o) + 0.5) / o - 0.5
    yy = np.arange(shape[0])[:, None, None, None] + sub[None, None, :, None]
    xx = np.arange(shape[1])[None, :, None, None] + sub[None, None, None, :]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2).mean(axis=(2, 3))


def test_com_of_shifted_disks_equals_shift():
    k = (32, 34)
    c0 = (15.5, 16.5)
    rng = np.random.default_rng(0)
    shifts = rng.uniform(-3, 3, (3, 4, 2))
    data = np.zeros((3, 4, *k), np.float32)
    for y in range(3):
        for x in range(4):
            data[y, x] = _disk(k, c0[0] + shifts[y, x, 0], c0[1] + shifts[y, x, 1], 7.0) * 1000
    # float64 brute force CoM of each pattern
    d = data.astype(np.float64)
    iy = np.arange(k[0])[:, None] - c0[0]
    ix = np.arange(k[1])[None, :] - c0[1]
    ref_y = (d * iy).sum((2, 3)) / d.sum((2, 3))
    ref_x = (d * ix).sum((2, 3)) / d.sum((2, 3))
    cy, cx = center_of_mass(data, centre=c0)
    np.testing.assert_allclose(cy, ref_y, atol=1e-4)
    np.testing.assert_allclose(cx, ref_x, atol=1e-4)
    # the disks' CoM is their shift (up to the 6× sub-sampled rendering of the edge)
    np.testing.assert_allclose(cy, shifts[..., 0], atol=1e-2)
    np.testing.assert_allclose(cx, shifts[..., 1], atol=1e-2)
    # integer data and mrad output
    cal = Calibration(detector_pixel=(0.5, 0.25), detector_units="mrad")
    my, mx = center_of_mass(np.round(data).astype(np.uint16), centre=c0, calibration=cal)
    np.testing.assert_allclose(my, 0.5 * shifts[..., 0], atol=1e-2)
    np.testing.assert_allclose(mx, 0.25 * shifts[..., 1], atol=1e-2)


def test_com_masks_and_empty_patterns():
    m = com_masks((3, 5), (1.0, 2.0))
    np.testing.assert_array_equal(m[1][:, 0], [-1, 0, 1])
    np.testing.assert_array_equal(m[2][0], [-2, -1, 0, 1, 2])
    cy, _ = center_of_mass(np.zeros((2, 2, 3, 5), np.float32))
    assert np.all(np.isnan(cy))


def test_rotate_com():
    gy, gx = rotate_com(np.array([0.0]), np.array([1.0]), 90)
    np.testing.assert_allclose([gy[0], gx[0]], [1.0, 0.0], atol=1e-12)
    back = rotate_com(*rotate_com(np.array([0.3]), np.array([-0.7]), 33), -33)
    np.testing.assert_allclose([back[0][0], back[1][0]], [0.3, -0.7])


def _phase(ny, nx):
    y, x = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    ay, ax = 2 * np.pi * 3 / ny, 2 * np.pi * 2 / nx
    phi = np.sin(ay * y) * np.cos(ax * x) + 0.5 * np.cos(2 * ax * x + 0.3)
    gy = ay * np.cos(ay * y) * np.cos(ax * x)
    gx = -ax * np.sin(ay * y) * np.sin(ax * x) - ax * np.sin(2 * ax * x + 0.3)
    return phi, gy, gx


def test_icom_recovers_periodic_phase_up_to_constant():
    phi, gy, gx = _phase(48, 40)
    got = integrate_com(gy, gx)
    np.testing.assert_allclose(got, phi - phi.mean(), atol=1e-5)
    got2 = integrate_com(gy / 0.5, gx / 0.25, step=(0.5, 0.25))
    np.testing.assert_allclose(got2, phi - phi.mean(), atol=1e-5)


def test_icom_mirror_handles_non_periodic_field():
    y, x = np.meshgrid(np.arange(40.0), np.arange(36.0), indexing="ij")
    phi = 0.02 * (y - 5) ** 2 + 0.01 * x * y  # smooth, not periodic
    gy, gx = 0.04 * (y - 5) + 0.01 * x, 0.01 * y
    err_m = np.abs(integrate_com(gy, gx, mirror=True) - (phi - phi.mean())).max()
    err_p = np.abs(integrate_com(gy, gx) - (phi - phi.mean())).max()
    assert err_m < 0.1 * np.ptp(phi) and err_m < err_p


def test_find_scan_rotation():
    phi, gy, gx = _phase(48, 48)
    ry, rx = rotate_com(gy, gx, -37.0)  # detector rotated by -37° from the scan
    angle, flip = find_scan_rotation(ry, rx)
    assert not flip
    assert min(abs(angle - 37.0), abs(angle - 37.0 - 180)) < 0.5


@pytest.mark.parametrize("bad", [np.zeros(3), np.zeros((2, 3, 4))])
def test_icom_bad_shape(bad):
    with pytest.raises(ValueError):
        integrate_com(bad, bad)
