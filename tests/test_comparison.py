"""The headless comparison table behind the napari Compare widget."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from napari_4dstem_ml import metrics
from napari_4dstem_ml.comparison import (
    MethodImage,
    choose_reference,
    compare_methods,
    comparison_figure,
)


def _images(seed=0, shape=(40, 36)):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[0], : shape[1]]
    truth = np.sin(y / 2.0) * np.cos(x / 3.0)
    return truth, [
        MethodImage("ADF", "adf", truth + rng.normal(0, 0.5, shape)),
        MethodImage("CNN", "cnn", 2 * truth + 1 + rng.normal(0, 0.05, shape)),
        MethodImage("label", "label", truth + rng.normal(0, 0.2, shape)),
        MethodImage("truth", "ground_truth", truth),
        MethodImage("sigma", "uncertainty", np.ones(shape)),
    ]


def test_table_is_metrics_compare_over_the_region():
    truth, images = _images()
    region = (20, 40, 4, 34)
    table = compare_methods(images, region=region, pixel_size=0.25, unit="Å")
    assert table.reference == "truth"  # the ground truth wins over the label
    assert [r.name for r in table.rows] == ["ADF", "CNN", "label"]  # uncertainty: not scored
    for row in table.rows:
        img = next(m.image for m in images if m.name == row.name)
        direct = metrics.compare(img[20:40, 4:34], truth[20:40, 4:34], pixel_size=0.25)
        assert row.pearson_r == direct.pearson_r
        assert row.ssim == direct.ssim
        assert row.psnr == direct.psnr
        assert row.frc_resolution == direct.frc_resolution
    # a scaled, offset, nearly noiseless image scores best (scale/offset are fitted away)
    assert table.row("CNN").pearson_r > 0.99 > table.row("ADF").pearson_r


def test_reference_falls_back_to_label_and_nan_images_are_flagged():
    truth, images = _images()
    no_truth = [m for m in images if m.role != "ground_truth"]
    assert choose_reference(no_truth).name == "label"
    partial = np.array(images[0].image)
    partial[30:, :] = np.nan  # an unfinished prediction
    table = compare_methods([MethodImage("half", "linear", partial), *no_truth])
    row = table.row("half")
    assert math.isnan(row.pearson_r) and "NaN" in row.note
    with pytest.raises(ValueError, match="no ground truth and no label"):
        compare_methods([images[0]])
    with pytest.raises(ValueError, match="outside"):
        compare_methods(images, region=(0, 50, 0, 10))


def test_csv_and_figure(tmp_path):
    truth, images = _images()
    table = compare_methods(images, region=(0, 40, 0, 36), pixel_size=0.5, unit="Å")
    path = table.to_csv(tmp_path / "t.csv")
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# reference: truth")
    rows = list(csv.reader(line for line in lines if not line.startswith("#")))
    assert rows[0] == ["method", "role", "pearson_r", "ssim", "psnr_db", "frc_resolution_Å", "note",
                       "r_label_sigma_0.2A", "r_raw", "r_lowpass_0.4A", "frc_ground_truth_A"]
    assert float(rows[1][2]) == table.rows[0].pearson_r
    assert float(rows[1][7]) == table.rows[0].resolution.r_label
    with pytest.raises(FileExistsError):
        table.to_csv(path)  # never over a file unasked
    png = comparison_figure(tmp_path / "f.png", images, table, title="test")
    from PIL import Image

    with Image.open(png) as im:
        assert im.size[0] > 400 and im.size[1] > 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png", "t.csv"]  # no temporary left


def test_resolution_columns_against_a_ground_truth():
    """With a ground truth in Å: r at the label's resolution, raw, low-passed and the FRC
    resolution are metrics.resolution_scores over the region; a label reference has none."""
    truth, images = _images()
    region = (4, 40, 2, 34)
    table = compare_methods(images, region=region, pixel_size=0.1, unit="Å")
    assert table.has_resolution and len(table.headers()) == 10
    assert "σ 0.2 Å" in table.headers()[6] and "FWHM 0.47 Å" in table.header_tooltips()[6]
    for row in table.rows:
        img = next(m.image for m in images if m.name == row.name)
        direct = metrics.resolution_scores(np.asarray(img, float)[4:40, 2:34], truth[4:40, 2:34], 0.1)
        assert row.resolution == direct
        assert len(table.formatted()[0]) == 10
    # the blurred truth beats the sharp one only at the label's resolution, not raw
    from scipy import ndimage

    blurred = ndimage.gaussian_filter(truth, 2.0, mode="nearest")
    t2 = compare_methods([MethodImage("sharp", "linear", truth + 0.0),
                          MethodImage("blurred", "cnn", blurred),
                          MethodImage("truth", "ground_truth", truth)], pixel_size=0.1, unit="Å")
    assert t2.row("sharp").resolution.r_raw > t2.row("blurred").resolution.r_raw
    assert t2.row("blurred").resolution.r_label > t2.row("sharp").resolution.r_label
    no_truth = [m for m in images if m.role != "ground_truth"]
    t3 = compare_methods(no_truth, pixel_size=0.1, unit="Å")
    assert not t3.has_resolution and len(t3.formatted()[0]) == 6 and len(t3.headers()) == 6
    t4 = compare_methods(images, pixel_size=1.0, unit="px")  # σ in Å needs Å pixels
    assert not t4.has_resolution


def test_a_ground_truth_with_references_blurred_before_sampling_is_scored_against_them():
    """A simulation's ground truth carries itself blurred before sampling: the resolution
    columns use those (cropped to the region), not a blur of the sampled image, and say so."""
    truth, images = _images()
    rng = np.random.default_rng(3)
    label_ref = truth + rng.normal(0, 0.3, truth.shape)  # deliberately unlike a blur of truth
    low_ref = truth + rng.normal(0, 0.3, truth.shape)
    gt = MethodImage("truth", "ground_truth", truth,
                     references={"label": label_ref, "lowpass": low_ref})
    exact = MethodImage("as the label reference", "cnn", 3 * label_ref - 1)
    region = (4, 40, 2, 34)
    sl = (slice(4, 40), slice(2, 34))
    table = compare_methods([gt, exact, *images[:2]], region=region, pixel_size=0.1, unit="Å")
    assert table.references_before_sampling
    assert table.row("as the label reference").resolution.r_label == pytest.approx(1.0)
    for row in table.rows:
        img = np.asarray(next(m.image for m in [exact, *images] if m.name == row.name), float)
        direct = metrics.resolution_scores(img[sl], truth[sl], 0.1, label_reference=label_ref[sl],
                                           lowpass_reference=low_ref[sl])
        assert row.resolution == direct
        assert row.resolution != metrics.resolution_scores(img[sl], truth[sl], 0.1)
    assert "before sampling" in table.csv_text() and "before sampling" in table.header_tooltips()[6]
    plain = compare_methods(images, region=region, pixel_size=0.1, unit="Å")
    assert not plain.references_before_sampling and "blurred here" in plain.csv_text()
