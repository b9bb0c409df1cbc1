"""Issue 17 — what limits the CNN's defect contrast: dose noise, or its mapping? And would
denoising the patterns first help? Measured on our own development set only
(``development.development_files``; never the transfer suite), with the default CNN (the base
fine-tuned on MoS2 as ``stemml train`` does; ``--tuned``).

Per development file: Pearson r against the ground truth at the label's resolution (3 edge
pixels left out), ρ of the ensemble's spread with its error, and, on files with a point defect,
its contrast in σ of the intact equivalent sites (``metrics.defect_contrast``) — of the CNN and
of the ADF image, on

- the recorded (Poisson) patterns;
- the same file's noise-free patterns (``noise_free/patterns`` × the dose): what the model
  would give without dose noise;
- the recorded patterns denoised by a low-rank fit: Anscombe transform √(n + 3/8) (noise
  σ ≈ 1/2), the mean pattern removed, the SVD over positions × detector pixels cut at the
  Gavish–Donoho hard threshold for a known noise level (no rank to choose), transformed back.

    python benchmarks/defect_noise.py [--tuned benchmarks/_out/transfer/default_conv4d.pt]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def gavish_donoho_lambda(beta: float) -> float:
    """The optimal hard threshold's factor λ*(β) for a known noise level (Gavish & Donoho,
    IEEE TIT 60, 5040, 2014): keep singular values above λ*(β)·√n·σ, β = m/n ≤ 1."""
    return float(np.sqrt(2 * (beta + 1) + 8 * beta / ((beta + 1) + np.sqrt(beta**2 + 14 * beta + 1))))


def low_rank_denoise(data: np.ndarray) -> tuple[np.ndarray, int]:
    """``data`` (scan_y, scan_x, ky, kx) counts → (denoised counts float32, rank kept)."""
    shape = data.shape
    x = np.asarray(data, np.float32).reshape(shape[0] * shape[1], -1)
    y = np.sqrt(np.clip(x, 0, None) + 3 / 8)
    mean = y.mean(0, keepdims=True)
    u, s, vt = np.linalg.svd(y - mean, full_matrices=False)
    m, n = sorted(y.shape)
    k = int((s > gavish_donoho_lambda(m / n) * np.sqrt(n) * 0.5).sum())
    yh = (u[:, :k] * s[:k]) @ vt[:k] + mean
    return np.clip(np.clip(yh, 0, None) ** 2 - 3 / 8, 0, None).reshape(shape).astype(np.float32), k


def main(argv=None) -> int:
    import h5py
    from development import DEFAULT_DATA, development_files
    from references import label_truth
    from transfer import drain

    from napari_4dstem_ml.baselines import classical_baselines
    from napari_4dstem_ml.io import load
    from napari_4dstem_ml.metrics import defect_contrast, equivalent_sites, pearson_r
    from napari_4dstem_ml.metrics import uncertainty_error_correlation as rho
    from napari_4dstem_ml.training.checkpoint import load_checkpoint
    from napari_4dstem_ml.workflow import reconstruct

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tuned", default=str(REPO / "benchmarks/_out/transfer/default_conv4d.pt"))
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = ap.parse_args(argv)
    tuned = load_checkpoint(args.tuned)
    sl = (slice(3, -3), slice(3, -3))
    print("| file | input | CNN r_label | ADF r_label | CNN ρ | defect σ: CNN / ADF (truth) |")
    print("|---|---|---|---|---|---|")
    for f in development_files(args.data):
        ds = load(f, dataset="datacube/data")
        truth = label_truth(f)
        step = ds.calibration.scan_step_A[0]
        with h5py.File(f, "r") as h:
            gt = np.asarray(h["ground_truth/potential"], np.float64)
            site = np.asarray(h["defects/sites"])[0] if "defects" in h else None
            noise_free = None
            if "noise_free" in h:
                dose = float(h["datacube"].attrs["dose_e_per_pattern"])
                noise_free = np.asarray(h["noise_free/patterns"], np.float32) * dose
        eq = None
        if site is not None:
            try:
                eq = equivalent_sites(gt, site, step)
            except ValueError:  # no lattice found around the defect: no contrast to measure
                eq = None
        t0 = time.perf_counter()
        den, rank = low_rank_denoise(np.asarray(ds.data))
        inputs = {"recorded": ds.data,
                  f"low-rank denoised (rank {rank}, {time.perf_counter() - t0:.0f} s)": den}
        if noise_free is not None:
            inputs["noise-free"] = noise_free
        for name, data in inputs.items():
            d = replace(ds, data=data)
            rep = drain(reconstruct(tuned, d))
            adf = classical_baselines(d).adf
            defect = "—"
            if eq is not None:
                defect = (f"{defect_contrast(rep.image, gt, site, eq, step):+.1f} / "
                          f"{defect_contrast(adf, gt, site, eq, step):+.1f} "
                          f"({defect_contrast(truth, gt, site, eq, step):+.1f})")
            print(f"| {f.stem} | {name} | {pearson_r(rep.image[sl], truth[sl]):.3f} | "
                  f"{pearson_r(adf[sl], truth[sl]):.3f} | {rho(rep.image, rep.spread, truth):.2f} | "
                  f"{defect} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    raise SystemExit(main())
