"""The README's demo figure from a ``stemml demo`` run folder.

    python docs/images/demo_figure.py stemml-output/run-YYYYMMDD-HHMMSS

ADF, iCoM, the linear model, the 4D CNN, the CNN ensemble's uncertainty and the ground truth,
for MoS2 (top) and PrScO3 (bottom), each titled with its r against the ground truth from the
run's ``summary.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main(run: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import tifffile

    from napari_4dstem_ml.samples import load_sample

    run_dir = Path(run)
    summary = json.loads((run_dir / "summary.json").read_text())
    cols = [("ADF", "adf"), ("iCoM", "icom"), ("linear", "linear"), ("4D CNN", "conv4d"),
            ("CNN uncertainty", "conv4d_uncertainty"), ("ground truth", None)]
    fig, axes = plt.subplots(2, len(cols), figsize=(2.2 * len(cols), 5.3))
    for i, key in enumerate(("mos2", "prsco3")):
        truth = np.asarray(load_sample(key).ground_truth, np.float64)
        sample = summary["samples"].get(key, {})
        for j, (title, stem) in enumerate(cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            img = truth if stem is None else tifffile.imread(run_dir / f"{key}_{stem}.tif")
            lo, hi = np.nanpercentile(img, [0.5, 99.5])
            ax.imshow(img, cmap="magma" if "uncertainty" in title else "gray", vmin=lo, vmax=hi)
            rep = None
            if stem in ("adf", "icom"):
                rep = sample.get(f"{stem}_vs_truth")
            elif stem in ("linear", "conv4d"):
                rep = summary["models"].get(stem, {}).get(key)
            label = title if i == 0 else ""
            if rep and "pearson_r" in rep:
                label += ("\n" if label else "") + f"r {rep['pearson_r']:.2f}, SSIM {rep['ssim']:.2f}"
            ax.set_title(label, fontsize=8)
            if j == 0:
                ax.set_ylabel({"mos2": "MoS2 (trained on upper half)",
                               "prsco3": "PrScO3 21 nm (unseen)"}[key], fontsize=8)
    fig.tight_layout()
    out = HERE / "demo_comparison.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


if __name__ == "__main__":
    print(main(sys.argv[1]))
