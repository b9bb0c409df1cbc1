"""Issue 17 — is the default CNN's image blurrier or sharper than the MoS2 ptychographic label
it misses SSIM ≥ 0.85 against? A least-squares answer: the D4-symmetric 3 × 3 kernel (centre,
edge and corner weights, and an offset) that best maps the CNN's image onto the label on the
training half, then applied to the unseen half. Neighbour weights > 0 blur, < 0 sharpen.

Printed: the kernel, and on the unseen half the CNN's image with and without it against the
label (r, SSIM: the target's measure), against the ground truth at the label's resolution and
against the raw ground truth. Nothing here is shipped or tuned: it measures.

    python benchmarks/label_sharpness.py [--tuned benchmarks/_out/transfer/default_conv4d.pt]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def d4_basis(image: np.ndarray) -> np.ndarray:
    """``image`` convolved with the centre, edge-neighbour and corner-neighbour stencils of a
    3 × 3 kernel ``(Ny, Nx, 3)`` (edges reflected)."""
    from scipy import ndimage

    stencils = [np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]]), np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]]),
                np.array([[1, 0, 1], [0, 0, 0], [1, 0, 1]])]
    return np.stack([ndimage.convolve(image, k.astype(float), mode="reflect") for k in stencils], -1)


def main(argv=None) -> int:
    from references import label_truth
    from transfer import drain

    from napari_4dstem_ml.metrics import compare
    from napari_4dstem_ml.samples import load_sample, sample_path
    from napari_4dstem_ml.training.checkpoint import load_checkpoint
    from napari_4dstem_ml.workflow import reconstruct, registered_label

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tuned", default=str(REPO / "benchmarks/_out/transfer/default_conv4d.pt"))
    args = ap.parse_args(argv)
    sample = load_sample("mos2")
    ds = sample.dataset
    step = ds.calibration.scan_step_A[0]
    label = drain(registered_label(ds, sample_path("mos2"), dataset_name="label/image"))[0]
    truth = np.asarray(sample.ground_truth, np.float64)
    truth_label = label_truth(sample_path("mos2"))  # blurred before sampling
    image = drain(reconstruct(load_checkpoint(args.tuned), ds)).image.astype(np.float64)
    half = ds.scan_shape[0] // 2
    basis = d4_basis(image)
    fit = (slice(2, half - 2), slice(2, -2))  # the training half, edges left out
    a = np.concatenate([basis[fit].reshape(-1, 3), np.ones((basis[fit][..., 0].size, 1))], 1)
    w, *_ = np.linalg.lstsq(a, label[fit].ravel(), rcond=None)
    matched = basis @ w[:3] + w[3]
    print(f"kernel (relative to its centre): edge neighbours {w[1] / w[0]:+.3f}, corners "
          f"{w[2] / w[0]:+.3f} ({'blurs' if w[1] > 0 else 'sharpens'})")
    print("\n| MoS2 unseen half | vs label: r / SSIM | vs truth at label res.: r / SSIM | vs raw truth: r / SSIM |")
    print("|---|---|---|---|")
    for name, img in (("CNN", image), ("CNN ⊛ kernel", matched), ("truth at label res.", truth_label)):
        cells = []
        for ref in (label, truth_label, truth):
            c = compare(img[half:], ref[half:], pixel_size=step, register=False, crop=2)
            cells.append(f"{c.pearson_r:.3f} / {c.ssim:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    raise SystemExit(main())
