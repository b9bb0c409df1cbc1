"""simulate.truth: a simulated file's ground truth rebuilt from its stored configuration and
blurred *before* sampling — against an independent Fourier-series evaluation of the blurred
potential at the scan positions, against the stored grid, and against the after-sampling blur
it replaces (which a coarse step aliases)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from test_simulate_engine import needs_abtem, run, tiny

from napari_4dstem_ml.metrics import label_resolution, pearson_r, resolution_scores


def fourier_series_at(potential, sampling, y_A, x_A, sigma_A):
    """The periodic ``potential`` (fine grid, (dy, dx) Å) blurred by a Gaussian of σ, at the
    points y_A × x_A, by summing its Fourier series at each point (no FFT back, no spline)."""
    ny, nx = potential.shape
    coef = np.fft.fft2(potential) / potential.size
    qy = np.fft.fftfreq(ny, sampling[0])
    qx = np.fft.fftfreq(nx, sampling[1])
    coef = coef * np.exp(-2 * np.pi**2 * sigma_A**2 * (qy[:, None] ** 2 + qx[None, :] ** 2))
    ey = np.exp(2j * np.pi * np.outer(y_A, qy))  # (n_y, ny)
    ex = np.exp(2j * np.pi * np.outer(qx, x_A))  # (nx, n_x)
    return (ey @ coef @ ex).real


def crystal(tmp_path_factory, step: float, n: int):
    """A MoS2 crystal (the periodic method: cheap at any scan size) scanned n × n at ``step`` Å."""
    out = tmp_path_factory.mktemp("truth") / f"mos2_{step}.h5"
    run(tiny(defects=(), scan_shape=(n, n), scan_step_A=step), out)
    return out


@pytest.fixture(scope="module")
def crystal_file(tmp_path_factory):
    return crystal(tmp_path_factory, 0.4, 20)


@needs_abtem
def test_rebuilt_truth_matches_the_file_and_a_fourier_series(crystal_file, tmp_path_factory):
    import h5py

    from napari_4dstem_ml.simulate.groundtruth import LABEL_REFERENCE
    from napari_4dstem_ml.simulate.truth import ground_truth

    g = ground_truth(crystal_file)
    with h5py.File(crystal_file, "r") as f:
        stored = f["ground_truth/potential"][()]
        written = f[LABEL_REFERENCE][()]  # what the engine wrote for the Compare dock
    np.testing.assert_allclose(g.at(0.0), stored, atol=1e-4 * np.ptp(stored))
    np.testing.assert_allclose(written, g.at(0.2), atol=1e-5 * np.ptp(written))
    for sigma in (0.2, 0.137):
        exact = fourier_series_at(g.potential, g.sampling, g.y_A, g.x_A, sigma)
        np.testing.assert_allclose(g.at(sigma), exact, atol=2e-3 * np.ptp(exact))
    # at a 0.4 Å step the blur after sampling is another image — the reason for the module —
    # while at 0.1 Å (Nyquist far beyond the potential's detail) it is the same
    for path, step, worse in ((crystal_file, 0.4, True), (crystal(tmp_path_factory, 0.1, 40), 0.1, False)):
        t = ground_truth(path)
        with h5py.File(path, "r") as f:
            after = label_resolution(f["ground_truth/potential"][()], step, 0.2)
        ref = fourier_series_at(t.potential, t.sampling, t.y_A, t.x_A, 0.2)
        c = int(round(0.8 / step))  # away from the after-sampling blur's edge handling
        dev = np.abs(after - ref)[c:-c, c:-c].max() / np.ptp(ref)
        r = pearson_r(after[c:-c, c:-c], ref[c:-c, c:-c])
        assert (dev > 0.08 and r < 0.999) if worse else (dev < 0.05 and r > 0.9995), (step, dev, r)
    # and resolution_scores reads the reference it is given
    exact = fourier_series_at(g.potential, g.sampling, g.y_A, g.x_A, 0.2)
    s = resolution_scores(exact, stored, 0.4, crop=1, label_reference=exact,
                          lowpass_reference=g.at(0.137))
    assert s.r_label == pytest.approx(1.0)
    assert s.r_lowpass == pytest.approx(pearson_r(exact[1:-1, 1:-1], g.at(0.137)[1:-1, 1:-1]))
    with pytest.raises(ValueError, match="sigma_A"):
        g.at(-0.1)


@needs_abtem
def test_a_file_whose_truth_does_not_match_its_configuration_is_refused(crystal_file, tmp_path):
    import h5py

    from napari_4dstem_ml.simulate.truth import ground_truth

    bad = tmp_path / "edited.h5"
    shutil.copy(crystal_file, bad)
    with h5py.File(bad, "r+") as f:
        f["ground_truth/potential"][2, 3] *= 1.1
    with pytest.raises(ValueError, match="edited.h5.*differs"):
        ground_truth(bad)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["ground_truth/potential"] = np.zeros((4, 4))
    with pytest.raises(ValueError, match="foreign.h5.*no simulation configuration"):
        ground_truth(foreign)
