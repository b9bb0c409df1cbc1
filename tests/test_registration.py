"""Tests of label loading and registration onto the scan grid."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest

from napari_4dstem_ml import registration as R
from napari_4dstem_ml.io.errors import AmbiguousDatasetError

# ----------------------------------------------------------------------------- synthetic field


def random_atoms(n, extent, seed):
    rng = np.random.default_rng(seed)
    return rng.uniform(-extent, extent, (n, 2)), rng.uniform(0.5, 1.0, n)


def field_at(pos, w, y, x, sigma):
    """Sum of Gaussian atoms at arbitrary points (y, x) in Å (vectorised over points)."""
    d2 = (y.ravel()[:, None] - pos[None, :, 0]) ** 2 + (x.ravel()[:, None] - pos[None, :, 1]) ** 2
    return (np.exp(-d2 / (2 * sigma**2)) @ w).reshape(y.shape)


def field_on_grid(pos, w, shape, px, sigma):
    """The same field on a pixel grid centred on the origin (patch per atom)."""
    out = np.zeros(shape)
    cy, cx = (shape[0] - 1) / 2, (shape[1] - 1) / 2
    r = int(math.ceil(4.5 * sigma / px))
    for (py, pxx), wi in zip(pos, w):
        iy, ix = int(round(py / px + cy)), int(round(pxx / px + cx))
        y0, y1 = max(iy - r, 0), min(iy + r + 1, shape[0])
        x0, x1 = max(ix - r, 0), min(ix + r + 1, shape[1])
        if y0 >= y1 or x0 >= x1:
            continue
        yy = (np.arange(y0, y1) - cy) * px - py
        xx = (np.arange(x0, x1) - cx) * px - pxx
        out[y0:y1, x0:x1] += wi * np.exp(-(yy[:, None] ** 2 + xx[None, :] ** 2) / (2 * sigma**2))
    return out


def make_case(theta=23.0, shift=(2.3, -1.7), scan=(48, 52), step=0.4, lpx=0.1, lsize=(300, 320),
              pad=20, sig_atom=0.45, blur=0.5, noise=0.1, invert=False, seed=0):
    """Label (fine pixels, zero padding), reference on the scan grid (blurred, noisy,
    optionally inverted), the noise-free truth on the scan grid and the analytic coverage."""
    pos, w = random_atoms(700, 20.0, seed)
    H, W = lsize[0] + 2 * pad, lsize[1] + 2 * pad
    label = field_on_grid(pos, w, (H, W), lpx, sig_atom)
    label[:pad] = 0
    label[-pad:] = 0
    label[:, :pad] = 0
    label[:, -pad:] = 0
    # scan position -> label-frame physical coordinates through the documented convention,
    # written out independently of the module: l = c_l + R(-θ)(s - c_s - shift)/scale
    scale = lpx / step
    sy, sx = np.mgrid[0 : scan[0], 0 : scan[1]].astype(float)
    ty = sy - (scan[0] - 1) / 2 - shift[0]
    tx = sx - (scan[1] - 1) / 2 - shift[1]
    t = math.radians(theta)
    ly = (math.cos(t) * ty + math.sin(t) * tx) / scale + (H - 1) / 2
    lx = (-math.sin(t) * ty + math.cos(t) * tx) / scale + (W - 1) / 2
    ry, rx = (ly - (H - 1) / 2) * lpx, (lx - (W - 1) / 2) * lpx
    truth = field_at(pos, w, ry, rx, sig_atom)
    ref = field_at(pos, w, ry, rx, math.hypot(sig_atom, blur)) * (sig_atom / math.hypot(sig_atom, blur)) ** 2
    ref = ref + noise * np.random.default_rng(seed + 1).normal(size=ref.shape)
    if invert:
        ref = 3.0 - ref
    inside = (ly >= pad) & (ly <= H - 1 - pad) & (lx >= pad) & (lx <= W - 1 - pad)
    return label, ref, truth, inside, scale


def ang_diff(a, b):
    return abs(((a - b + 180) % 360) - 180)


# ----------------------------------------------------------------------------- registration


def test_convention_matches_label_coordinates():
    c = R.label_coordinates((4, 6), (11, 21), 0.5, 90.0, (1.0, 0.0))
    # scan centre (1.5, 2.5) + shift (1, 0): the label centre (5, 10) lands at (2.5, 2.5)
    ly, lx = c[:, 2, 2]  # scan (2, 2) = label centre + (−0.5, −0.5) scan steps
    # rotated back by −90° (t = (−0.5, −0.5) → R(−90°) t = (−0.5, 0.5)), / 0.5 → (−1, 1)
    assert (ly, lx) == pytest.approx((5 - 1, 10 + 1))


def test_register_recovers_planted_geometry():
    label, ref, truth, inside, scale = make_case()
    reg = R.register_label(label, 0.1, ref, 0.4, search_rotation=(-45, 90))
    p = reg.params
    assert p.scale == pytest.approx(scale)
    assert ang_diff(p.rotation_deg, 23.0) < 1.0
    assert p.shift_yx == pytest.approx((2.3, -1.7), abs=0.2)
    assert p.crop == (20, 320, 20, 340)
    assert set(reg.estimated) == {"rotation_deg", "shift"}
    m = reg.coverage_mask
    assert m.all() and inside.all()
    r = np.corrcoef(reg.image_on_scan_grid[m], truth[m])[0, 1]
    assert r > 0.95
    assert reg.sign == 1 and reg.score > 0.8
    assert reg.image_on_scan_grid.dtype == np.float32 and reg.image_on_scan_grid.shape == (48, 52)


@pytest.mark.slow
def test_register_full_circle_inverted_contrast_partial_coverage():
    label, ref, truth, inside, _ = make_case(theta=-117.0, shift=(9.0, -6.5), invert=True, seed=3)
    assert 0.9 < inside.mean() < 1.0  # the planted shift pushes a corner off the label
    reg = R.register_label(label, 0.1, ref, 0.4)
    assert ang_diff(reg.params.rotation_deg, -117.0) < 1.0
    assert reg.params.shift_yx == pytest.approx((9.0, -6.5), abs=0.2)
    assert reg.sign == -1 and reg.score < -0.8
    m = reg.coverage_mask
    # the mask excludes what falls on the padding, and keeps the rest (edges within a pixel)
    assert not np.any(m & ~inside)
    assert (inside & ~m).sum() <= 0.02 * inside.size
    assert np.corrcoef(reg.image_on_scan_grid[m], truth[m])[0, 1] > 0.95


def test_coverage_mask_excludes_padding_with_manual_parameters():
    label, ref, truth, inside, scale = make_case(theta=10.0, shift=(25.0, 28.0))
    assert inside.mean() < 0.9
    reg = R.register_label(label, 0.1, ref, 0.4, rotation_deg=10.0, shift=(25.0, 28.0))
    assert reg.estimated == ()
    assert reg.params.rotation_deg == pytest.approx(10.0)
    assert reg.params.shift_yx == (25.0, 28.0)
    m = reg.coverage_mask
    assert not np.any(m & ~inside)
    assert (inside & ~m).sum() <= 0.03 * inside.size
    assert np.corrcoef(reg.image_on_scan_grid[m], truth[m])[0, 1] > 0.99
    # outside the coverage the image holds the covered mean (finite, neutral)
    assert np.allclose(reg.image_on_scan_grid[~m], reg.image_on_scan_grid[m].mean(), rtol=1e-5)


def test_manual_override_of_rotation_is_honoured_and_shift_fitted():
    label, ref, truth, inside, scale = make_case(theta=40.0, shift=(-3.0, 1.0))
    reg = R.register_label(label, 0.1, ref, 0.4, rotation_deg=40.0)
    assert reg.params.rotation_deg == pytest.approx(40.0)
    assert reg.estimated == ("shift",)
    assert reg.params.shift_yx == pytest.approx((-3.0, 1.0), abs=0.2)
    # a wrong manual rotation is honoured too (and the fit is visibly worse)
    bad = R.register_label(label, 0.1, ref, 0.4, rotation_deg=55.0)
    assert bad.params.rotation_deg == pytest.approx(55.0)
    assert bad.fit_score < reg.fit_score - 0.2


def test_scale_override_and_refinement():
    label, ref, truth, inside, scale = make_case(theta=5.0, shift=(0.5, 0.5))
    reg = R.register_label(label, None, ref, None, scale=scale * 1.04, rotation_deg=5.0,
                           shift=(0.5, 0.5), refine_scale=True)
    assert reg.params.scale == pytest.approx(scale, rel=0.01)
    assert "scale" in reg.estimated
    with pytest.raises(ValueError, match="scale"):
        R.register_label(label, None, ref, 0.4)


def test_params_json_round_trip():
    p = R.RegistrationParams(0.25, 12.5, (1.0, -2.0), (1, 2, 3, 4))
    assert R.RegistrationParams.from_json(p.to_json()) == p


def test_valid_region_detects_constant_padding_and_nan():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(40, 50))
    img[:5] = 0.0
    img[:, -7:] = 1.0
    img[20, 20] = np.nan
    img[30, 30] = 0.0  # an isolated zero inside is data, not padding
    v = R.valid_region(img)
    assert not v[:5].any() and not v[:, -7:].any() and not v[20, 20]
    assert v[30, 30] and v[5:, :-7].sum() == 35 * 43 - 1


# ----------------------------------------------------------------------------- loaders


def test_load_tiff_imagej_and_resolution_unit(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    img = np.arange(30 * 40, dtype=np.float32).reshape(30, 40)
    p = tmp_path / "ij.tif"
    # ImageJ: XResolution = pixels per unit, unit from the ImageJ description
    tifffile.imwrite(p, img, imagej=True, resolution=(1 / 0.005, 1 / 0.005), metadata={"unit": "nm"})
    lab = R.load_label(p)
    np.testing.assert_array_equal(lab.image, img)
    assert lab.image.dtype == np.float32
    assert lab.pixel_size_A == pytest.approx(0.05)
    assert lab.source == p
    # plain TIFF, ResolutionUnit = centimetre: 1e9 px/cm -> 1e-9 cm = 0.1 Å
    p2 = tmp_path / "cm.tiff"
    tifffile.imwrite(p2, img.astype(np.uint16), resolution=(1e9, 1e9), resolutionunit="CENTIMETER")
    assert R.load_label(p2).pixel_size_A == pytest.approx(0.1)
    # 72 dpi from an image editor is not an atomic pixel size
    p3 = tmp_path / "dpi.tif"
    tifffile.imwrite(p3, img, resolution=(72, 72), resolutionunit="INCH")
    assert R.load_label(p3).pixel_size_A is None
    assert R.load_label(p3, pixel_size=0.2).pixel_size_A == 0.2


def test_load_npy_npz(tmp_path):
    img = np.random.default_rng(0).normal(size=(12, 9))
    np.save(tmp_path / "a.npy", img)
    lab = R.load_label(tmp_path / "a.npy", pixel_size=0.1)
    np.testing.assert_allclose(lab.image, img.astype(np.float32))
    assert lab.pixel_size_A == 0.1
    np.save(tmp_path / "c.npy", np.exp(1j * img))
    lab = R.load_label(tmp_path / "c.npy")
    np.testing.assert_allclose(lab.image, np.angle(np.exp(1j * img)), atol=1e-6)
    assert "phase" in lab.description
    np.savez(tmp_path / "b.npz", first=img, second=img * 2, pixel_size_A=np.float64(0.07))
    with pytest.raises(AmbiguousDatasetError) as e:
        R.load_label(tmp_path / "b.npz")
    assert set(e.value.candidates) == {"first", "second"}
    lab = R.load_label(tmp_path / "b.npz", dataset="second")
    np.testing.assert_allclose(lab.image, (img * 2).astype(np.float32))
    assert lab.pixel_size_A == pytest.approx(0.07)
    np.save(tmp_path / "v.npy", np.zeros((3, 4, 5)))
    with pytest.raises(R.LabelError, match="v.npy"):
        R.load_label(tmp_path / "v.npy")


def test_load_hdf5(tmp_path):
    img = np.random.default_rng(1).normal(size=(16, 20)).astype(np.float32)
    p = tmp_path / "lab.h5"
    with h5py.File(p, "w") as f:
        d = f.create_dataset("recon/a", data=img)
        d.attrs["pixel_size"] = 0.012
        d.attrs["units"] = "nm"
        f.create_dataset("recon/stack", data=np.zeros((3, 16, 20)))
        f.create_dataset("other/amp", data=img + 1)
    with pytest.raises(AmbiguousDatasetError):
        R.load_label(p)
    lab = R.load_label(p, dataset="/recon/a")
    np.testing.assert_array_equal(lab.image, img)
    assert lab.pixel_size_A == pytest.approx(0.12)
    with pytest.raises(R.LabelError, match="nothing"):
        R.load_label(p, dataset="nothing")
    p2 = tmp_path / "one.hdf5"
    with h5py.File(p2, "w") as f:
        f.create_dataset("img", data=img[None])  # (1, y, x) squeezes to 2D
        f["img"].attrs["pixel_size_A"] = 0.3
    lab = R.load_label(p2)
    assert lab.shape == (16, 20) and lab.pixel_size_A == pytest.approx(0.3)


def write_mat73(path, variables):
    """A MATLAB v7.3 file as MATLAB writes it: HDF5 with a 512-byte user block, arrays
    stored column-major (i.e. transposed), complex as a {real, imag} compound, structs as
    groups, and a MATLAB_class attribute on every variable."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, value in variables.items():
            if isinstance(value, dict):
                g = f.create_group(name)
                g.attrs["MATLAB_class"] = np.bytes_("struct")
                for k, v in value.items():
                    d = g.create_dataset(k, data=np.asarray(v, np.float64).T)
                    d.attrs["MATLAB_class"] = np.bytes_("double")
                continue
            a = np.asarray(value)
            if np.iscomplexobj(a):
                ct = np.dtype([("real", "<f4"), ("imag", "<f4")])
                data = np.empty(a.T.shape, ct)
                data["real"] = a.real.T
                data["imag"] = a.imag.T
                d = f.create_dataset(name, data=data)
                d.attrs["MATLAB_class"] = np.bytes_("single")
            else:
                d = f.create_dataset(name, data=a.T)
                d.attrs["MATLAB_class"] = np.bytes_("double")
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    with open(path, "r+b") as fh:
        fh.write(header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM")


def test_load_mat_v73_complex_object(tmp_path):
    rng = np.random.default_rng(2)
    phase = rng.uniform(-1, 1, (24, 30))  # rows x cols, deliberately not square
    obj = (0.9 * np.exp(1j * phase)).astype(np.complex64)
    p = tmp_path / "Niter100.mat"
    write_mat73(p, {"object": obj, "probe": np.ones((8, 8)), "p": {"dx_spec": [0.25e-10, 0.25e-10]}})
    assert h5py.is_hdf5(p)
    lab = R.load_label(p)  # 'object' preferred among several 2D variables
    assert lab.shape == (24, 30)
    np.testing.assert_allclose(lab.image, phase, atol=1e-5)
    assert lab.pixel_size_A == pytest.approx(0.25)
    assert "phase" in lab.description and "object" in lab.description
    lab2 = R.load_label(p, dataset="probe")
    assert lab2.shape == (8, 8)


def test_load_mat_v5(tmp_path):
    from scipy.io import savemat

    img = np.arange(12.0).reshape(3, 4)
    savemat(tmp_path / "v5.mat", {"image": img, "pixel_size_A": 0.4})
    lab = R.load_label(tmp_path / "v5.mat")
    np.testing.assert_array_equal(lab.image, img)
    assert lab.pixel_size_A == pytest.approx(0.4)


def test_load_png(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    img = (np.arange(20 * 25).reshape(20, 25) * 100).astype(np.uint16)
    p = tmp_path / "lab.png"
    Image.fromarray(img).save(p)
    lab = R.load_label(p)
    np.testing.assert_array_equal(lab.image, img.astype(np.float32))
    assert lab.pixel_size_A is None


def test_load_errors(tmp_path):
    with pytest.raises(R.LabelError, match="no such file"):
        R.load_label(tmp_path / "missing.tif")
    (tmp_path / "x.xyz").write_text("hi")
    with pytest.raises(R.LabelError, match="unsupported"):
        R.load_label(tmp_path / "x.xyz")
    p = tmp_path / "empty.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("v", data=np.zeros(10))
    with pytest.raises(R.LabelError, match="no 2D image"):
        R.load_label(p)


def _register_sample(key: str):
    """A bundled sample's label registered against its virtual ADF image as training does, and
    the shift (scan steps, label centre from scan centre) the origin the file records gives."""
    from napari_4dstem_ml.registration import register_label
    from napari_4dstem_ml.samples import load_sample
    from napari_4dstem_ml.workflow import reference_image

    s = load_sample(key)
    ref, _ = reference_image(s.dataset)
    step = s.dataset.calibration.scan_step_A[0]
    reg = register_label(s.label, s.label_pixel_size_A, ref, step)
    ny, nx = s.dataset.scan_shape
    ly, lx = s.label.shape
    expected = [
        (s.label_origin_A[i] + (n_l - 1) / 2 * s.label_pixel_size_A - (n_s - 1) / 2 * step) / step
        for i, (n_l, n_s) in enumerate([(ly, ny), (lx, nx)])
    ]
    return s, reg, expected


def test_crystal_label_registers_to_its_true_origin_not_a_symmetric_copy():
    """The MoS2 sample's label is a crystal: it matches itself after lattice translations and
    120° rotations. Registration must find the geometry the file records (origin_A)."""
    s, reg, expected = _register_sample("mos2")
    assert abs(reg.params.rotation_deg) < 0.5
    # a symmetric copy would be off by a lattice translation (>= 11 scan steps) or 120°; the
    # reconstruction itself sits ~0.05 Å (0.2 steps) off its nominal probe positions
    np.testing.assert_allclose(reg.params.shift_yx, expected, atol=0.25)
    assert reg.coverage == 1.0
    assert reg.warnings == ()


def test_a_pseudo_symmetric_copy_is_flagged():
    """PrScO3's label (its exact potential) against the thick crystal's ADF fits best half a
    cell off the geometry the file records (r 0.79 against the truth there, 0.99 at the
    recorded origin): the fit gives up coverage the centred label has, and says so."""
    s, reg, expected = _register_sample("prsco3")
    off = np.hypot(*(np.asarray(reg.params.shift_yx) - expected))
    if off < 1.0:  # registered right: then it must not warn
        assert reg.warnings == ()
        return
    assert reg.coverage < 0.9 and len(reg.warnings) == 1
    assert "symmetric copy" in reg.warnings[0] and "centred it would cover 100 %" in reg.warnings[0]
    truth = s.ground_truth_references.get("label", s.ground_truth)
    m = reg.coverage_mask
    assert np.corrcoef(reg.image_on_scan_grid[m], truth[m])[0, 1] < 0.9
