"""Issue 17, target 4 — does the spread over *independent trainings* rank the CNN's error?

Between two trainings of the base by the same recipe a suite file's r moves by up to 0.03 and
its ρ by up to 0.3 (README, Trust): a variation one ensemble's spread cannot see, because its
members share a training run's batches. Given several fine-tuned CNN ensembles from separate
base trainings (``NAME=PATH``; e.g. the shipped default and ``light_library.py``'s two), each
file is reconstructed by every one; the combination's image is their mean and its spread the
total over all members and views (law of total variance: the mean of each ensemble's variance
plus the variance of the ensembles' means). Printed per file: r at the label's resolution
(3 edge pixels left out) of each ensemble and of the mean, and ρ (Spearman of local RMS maps,
``metrics.uncertainty_error_correlation``) of the first ensemble's spread, of the first two
combined, of all combined, and of the between-trainings part alone.

    python benchmarks/trainings_ensemble.py A=a.pt B=b.pt C=c.pt            # development set
    python benchmarks/trainings_ensemble.py … --data benchmarks/_data/transfer  # the suite, once
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def combine(images: list[np.ndarray], spreads: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray,
                                                                            np.ndarray]:
    """Mean image, total spread and between-ensembles spread of equally weighted ensembles
    (each ``spreads[k]`` the population standard deviation over ensemble k's members/views)."""
    imgs = np.stack(images)
    within = np.mean(np.stack(spreads) ** 2, axis=0)
    between = imgs.var(axis=0)
    return imgs.mean(axis=0), np.sqrt(within + between), np.sqrt(between)


def main(argv=None) -> int:
    sys.path.insert(0, str(Path(__file__).parent))
    from development import development_files
    from references import label_truth
    from transfer import drain

    from napari_4dstem_ml.io import load
    from napari_4dstem_ml.metrics import pearson_r
    from napari_4dstem_ml.metrics import uncertainty_error_correlation as rho
    from napari_4dstem_ml.training.checkpoint import load_checkpoint
    from napari_4dstem_ml.workflow import reconstruct

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+", help="NAME=PATH of fine-tuned CNN ensembles (≥ 2)")
    ap.add_argument("--data", type=Path, default=None,
                    help="a folder of simulated files (default: our development set)")
    args = ap.parse_args(argv)
    paths = dict(c.split("=", 1) for c in args.checkpoints)
    if len(paths) < 2:
        ap.error("give at least two checkpoints")
    models = {k: load_checkpoint(v) for k, v in paths.items()}
    files = development_files() if args.data is None else sorted(args.data.glob("*.h5"))
    names = list(models)
    sl = (slice(3, -3), slice(3, -3))
    print(f"\n| file | r_label: {' / '.join(names)} / mean | ρ: {names[0]} / first two / all "
          "/ between trainings |")
    print("|---|---|---|")
    summary: dict[str, list[float]] = {"first": [], "two": [], "all": [], "between": []}
    for f in files:
        ds = load(f, dataset="datacube/data")
        truth = label_truth(f)
        images, spreads = [], []
        for lm in models.values():
            rep = drain(reconstruct(lm, ds))
            if rep.spread is None:
                raise SystemExit(f"{f.name}: a checkpoint is not an ensemble (no spread)")
            images.append(rep.image)
            spreads.append(rep.spread)
        mean2, total2, _ = combine(images[:2], spreads[:2])
        mean, total, between = combine(images, spreads)
        rs = [pearson_r(im[sl], truth[sl]) for im in (*images, mean)]
        rhos = {"first": rho(images[0], spreads[0], truth), "two": rho(mean2, total2, truth),
                "all": rho(mean, total, truth), "between": rho(mean, between, truth)}
        if not f.stem.startswith("mos2"):  # MoS2 is every model's training sample
            for k, v in rhos.items():
                summary[k].append(v)
        print(f"| {f.stem} | {' / '.join(f'{r:.3f}' for r in rs)} | "
              f"{' / '.join(f'{v:.2f}' for v in rhos.values())} |", flush=True)
    print("\nρ min / mean over the files other than MoS2: " + ", ".join(
        f"{k} {min(v):.2f} / {np.mean(v):.2f}" for k, v in summary.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
