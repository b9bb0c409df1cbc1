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
    assert rows[0] == ["method", "role", "pearson_r", "ssim", "psnr_db", "frc_resolution_Å", "note"]
    assert float(rows[1][2]) == table.rows[0].pearson_r
    with pytest.raises(FileExistsError):
        table.to_csv(path)  # never over a file unasked
    png = comparison_figure(tmp_path / "f.png", images, table, title="test")
    from PIL import Image

    with Image.open(png) as im:
        assert im.size[0] > 400 and im.size[1] > 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png", "t.csv"]  # no temporary left
