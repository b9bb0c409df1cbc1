"""Does the fine-tune's augmentation cost the MoS2 image its sharpness? The default `stemml
train` fine-tunes the base CNN on the MoS2 sample with the full on-the-fly augmentation —
among it *thinning*: each training patch keeps only 30-100 % of its recorded counts, so the
model learns from noisier patterns than the full-dose ones it is then applied to. Here the
default fine-tune is run as shipped, without thinning, and without any augmentation, in one
run with one seed, and each is scored on what issue 17 targets that it can move: MoS2's unseen
half against its ptychographic label (r, SSIM; target SSIM >= 0.85) and, on our own
development items (never the transfer suite), r against the ground truth at the label's
resolution and ρ of the ensemble's spread with the error (as ``benchmarks/transfer.py``).

    python benchmarks/fine_tune_augment.py [-o DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    from development import development_files
    from references import label_truth
    from selection_bias import fine_tune, mos2_and_label

    from napari_4dstem_ml.io import load
    from napari_4dstem_ml.metrics import compare, pearson_r
    from napari_4dstem_ml.metrics import uncertainty_error_correlation as rho
    from napari_4dstem_ml.predict.events import finish
    from napari_4dstem_ml.training.augment import AugmentConfig
    from napari_4dstem_ml.workflow import reconstruct

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--out", type=Path, default=None)
    args = ap.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="fine_tune_augment_"))
    out.mkdir(parents=True, exist_ok=True)
    ds, registered = mos2_and_label()
    lab, step = registered[0], ds.calibration.scan_step_A[0]
    variants = {"as shipped": AugmentConfig(),
                "no thinning": replace(AugmentConfig(), thinning=None),
                "no augmentation": None}
    files = development_files()[1:]  # MoS2 itself is scored against its label below
    data = [(Path(f).stem, load(f, dataset="datacube/data")) for f in files]
    truths = [label_truth(f) for f in files]
    print("| fine-tune | epoch kept / run | MoS2 unseen half vs label: r / SSIM | "
          + " | ".join(f"{n}: r / ρ" for n, _ in data) + " | r / ρ min, mean |")
    print("|---" * (len(data) + 4) + "|")
    for i, (what, aug) in enumerate(variants.items()):
        loaded, kept, run = fine_tune("conv4d", ds, registered, None, out / f"conv4d_{i}.pt",
                                      augment=aug)
        img = finish(reconstruct(loaded, ds)).image
        half = compare(img[32:], lab[32:], pixel_size=step, register=False, crop=2)
        c = (slice(3, -3), slice(3, -3))
        scores = []
        for (_, d), t in zip(data, truths):
            rep = finish(reconstruct(loaded, d))
            scores.append((pearson_r(rep.image[c], t[c]), rho(rep.image, rep.spread, t)))
        r, p = np.array(scores).T
        print(f"| {what} | {kept} / {run} | {half.pearson_r:.3f} / {half.ssim:.3f} | "
              + " | ".join(f"{a:.3f} / {b:.2f}" for a, b in scores)
              + f" | {r.min():.3f} / {p.min():.2f}, {r.mean():.3f} / {p.mean():.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
