"""Does a larger ensemble rank the error better? (issue 17: ρ ≥ 0.5 on every suite file.)

The base CNN is retrained by the shipped recipe with ``--members`` members instead of 3
(``benchmarks/make_library.py`` first), fine-tuned on the MoS2 sample as ``stemml train`` does,
and scored on the transfer suite with all its members and with the first three alone. The
members are trained on the same batches, each from its own initialisation and with its own loss,
so the first three are an ensemble of the shipped size from the same run: the comparison holds
the training run fixed. Prints r at the label's resolution, the defect contrast and ρ of the
spread (the first three; the mean over four disjoint or interleaved triples; all members).
Measured, not shipped (README, Trust): every member costs a pass in training and in every
reconstruction.

    python benchmarks/ensemble_size.py [--members 6] [--library benchmarks/_data/library]
        [--out benchmarks/_data/ensemble_size]            # about 15 min on 2 cores
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def train_base(library: Path, out: Path, members: int) -> Path:
    from napari_4dstem_ml.base_model.recipe import RECIPE, train_base_models
    from napari_4dstem_ml.predict.events import finish

    recipe = replace(RECIPE, cnn={**RECIPE.cnn, "ensemble": members})
    t0 = time.time()
    paths = finish(train_base_models(library, out, recipe, ("conv4d",)))
    print(f"base CNN with {members} members trained in {time.time() - t0:.0f} s", flush=True)
    return paths["conv4d"]


def fine_tune(base: Path, out: Path) -> Path:
    from napari_4dstem_ml.predict.events import finish
    from napari_4dstem_ml.samples import load_sample, sample_path
    from napari_4dstem_ml.workflow import TrainingJob, registered_label, run_job

    mos2 = load_sample("mos2")
    reg = finish(registered_label(mos2.dataset, sample_path("mos2"), dataset_name="label/image"))
    job = TrainingJob(label=str(sample_path("mos2")), label_dataset="label/image",
                      output=str(out / "tuned_conv4d.pt"), model="conv4d", overwrite=True,
                      init=str(base))
    res = finish(run_job(job, mos2.dataset, reg))
    print(res.report(), flush=True)
    return Path(res.checkpoint)


def member_images(loaded, dataset) -> np.ndarray:
    """``(M, Ny, Nx)``: each member's image (label units)."""
    from napari_4dstem_ml.models.ensemble import Ensemble
    from napari_4dstem_ml.predict.events import finish
    from napari_4dstem_ml.predict.pipeline import iter_reconstruct

    return np.stack([finish(iter_reconstruct(Ensemble([m]), loaded.preprocessor, dataset)).image
                     for m in loaded.model.members]).astype(np.float64)


def evaluate(tuned: Path, suite: Path) -> None:
    import h5py
    from references import label_truth

    from napari_4dstem_ml.io import load
    from napari_4dstem_ml.metrics import (
        compare,
        defect_contrast,
        equivalent_sites,
        pearson_r,
    )
    from napari_4dstem_ml.metrics import uncertainty_error_correlation as rho
    from napari_4dstem_ml.predict.events import finish
    from napari_4dstem_ml.samples import load_sample, sample_path
    from napari_4dstem_ml.training.checkpoint import load_checkpoint
    from napari_4dstem_ml.workflow import registered_label

    lm = load_checkpoint(tuned)
    n = len(lm.model.members)
    if n < 6:
        raise SystemExit(f"{tuned}: {n} members; the comparison needs at least 6")
    mos2 = load_sample("mos2")
    lab = finish(registered_label(mos2.dataset, sample_path("mos2"), dataset_name="label/image"))[0]
    m = member_images(lm, mos2.dataset)
    for k in (3, n):
        r = compare(m[:k].mean(0)[32:], lab[32:], pixel_size=mos2.dataset.calibration.scan_step_A[0],
                    register=False, crop=2)
        print(f"MoS2 unseen half vs label, {k} members: r {r.pearson_r:.3f}, SSIM {r.ssim:.3f}")
    triples = [(0, 1, 2), (3, 4, 5), (0, 2, 4), (1, 3, 5)]
    print(f"\n| file | r_label 3 / {n} | defect σ 3 / {n} | ρ spread: first 3 / mean of 4 triples / {n} |")
    print("|---|---|---|---|")
    for f in sorted(suite.glob("*.h5")):
        ds = load(f, dataset="datacube/data")
        step = ds.calibration.scan_step_A[0]
        with h5py.File(f, "r") as h:
            gt = np.asarray(h["ground_truth/potential"], np.float64)
            sites = np.asarray(h["defects/sites"]) if "defects" in h else np.zeros((0, 2))
        truth = label_truth(f)  # blurred before sampling
        c = (slice(3, -3), slice(3, -3))
        m = member_images(lm, ds)
        few, all_ = m[:3].mean(0), m.mean(0)
        rho3 = [rho(m[list(t)].mean(0), m[list(t)].std(0), truth) for t in triples]
        defect = "—"
        if len(sites):
            eq = equivalent_sites(gt, sites[0], step)
            defect = " / ".join(f"{defect_contrast(im, gt, sites[0], eq, step):+.1f}" for im in (few, all_))
        print(f"| {f.stem} | {pearson_r(few[c], truth[c]):.3f} / {pearson_r(all_[c], truth[c]):.3f} | "
              f"{defect} | {rho3[0]:.2f} / {np.mean(rho3):.2f} / {rho(all_, m.std(0), truth):.2f} |",
              flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=6)
    ap.add_argument("--library", type=Path, default=REPO / "benchmarks/_data/library")
    ap.add_argument("--suite", type=Path, default=REPO / "benchmarks/_data/transfer")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/_data/ensemble_size")
    ap.add_argument("--tuned", type=Path, help="an already fine-tuned checkpoint: score it only")
    args = ap.parse_args(argv)
    if args.members < 6:
        ap.error("--members: at least 6 (the first three are compared with all)")
    tuned = args.tuned
    if tuned is None:
        args.out.mkdir(parents=True, exist_ok=True)
        tuned = fine_tune(train_base(args.library, args.out, args.members), args.out)
    evaluate(tuned, args.suite)
    return 0


if __name__ == "__main__":
    sys.exit(main())
