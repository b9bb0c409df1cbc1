"""Mirror averaging (``EnsembleConfig.mirror_average``): the CNN ensemble's members also applied
to the x-mirrored scan (scan x and kx flipped together), measured against the plain ensemble
with the same weights, in one run, on our own development items — never on the transfer suite.

Data: the bundled MoS2 and PrScO3 samples (with their ground truth) and
``simulate.suites.development_set()``, simulated into ``--data`` unless there (about 5 min of
one core). Model: ``--checkpoint`` (default: the default CNN of ``benchmarks/transfer.py``,
the base fine-tuned on MoS2), its mirror averaging switched off and on. Scores as
``benchmarks/transfer.py``: Pearson r against the ground truth at the label's resolution
(``metrics.LABEL_SIGMA_A``), Spearman ρ of the ensemble's spread with the local error
(``metrics.uncertainty_error_correlation``), MoS2's unseen half against its ptychographic label,
and the reconstruction's wall time (reading, checks and preprocessing included).

    python benchmarks/mirror_average.py [--checkpoint PATH]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    from development import DEFAULT_DATA, development_files
    from references import label_truth

    from napari_4dstem_ml.io import load
    from napari_4dstem_ml.metrics import compare, pearson_r
    from napari_4dstem_ml.metrics import uncertainty_error_correlation as rho
    from napari_4dstem_ml.predict.events import finish
    from napari_4dstem_ml.samples import load_sample, sample_path
    from napari_4dstem_ml.training.checkpoint import load_checkpoint
    from napari_4dstem_ml.workflow import reconstruct, registered_label

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=str(REPO / "benchmarks/_out/transfer/default_conv4d.pt"))
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = ap.parse_args(argv)
    files = development_files(args.data)
    lm = load_checkpoint(args.checkpoint)
    if not hasattr(lm.model, "mirror_average"):
        raise SystemExit(f"{args.checkpoint} holds no ensemble: nothing to mirror-average")
    n = len(lm.model.members)
    label = finish(registered_label(load_sample("mos2").dataset, sample_path("mos2"),
                                    dataset_name="label/image"))[0]
    print(f"{args.checkpoint}: {n} members; off = {n} images, mirror = {2 * n}\n")
    print("| file | r off / mirror | ρ spread off / mirror | time off / mirror (s) |")
    print("|---|---|---|---|")
    rows = []
    for f in files:
        ds = load(f, dataset="datacube/data")
        truth = label_truth(f)
        res = {}
        for mirror in (False, True):
            lm.model.mirror_average = mirror
            t0 = time.perf_counter()
            rep = finish(reconstruct(lm, ds))
            dt = time.perf_counter() - t0
            c = (slice(3, -3), slice(3, -3))
            res[mirror] = (pearson_r(rep.image[c], truth[c]), rho(rep.image, rep.uncertainty, truth),
                           dt, rep.image)
        rows.append((Path(f).stem, res))
        print(f"| {Path(f).stem} | {res[False][0]:.4f} / {res[True][0]:.4f} | "
              f"{res[False][1]:.2f} / {res[True][1]:.2f} | {res[False][2]:.1f} / {res[True][2]:.1f} |",
              flush=True)
    others = rows[1:]  # MoS2 is the fine-tuning sample: left out of the summary
    for i, what in ((0, "r"), (1, "ρ")):
        off = [r[False][i] for _, r in others]
        on = [r[True][i] for _, r in others]
        up = sum(b > a for a, b in zip(off, on))
        print(f"{what} min / mean without MoS2: off {min(off):.3f} / {np.mean(off):.3f}, "
              f"mirror {min(on):.3f} / {np.mean(on):.3f}; higher with mirror on {up} of {len(on)}")
    t_off = sum(r[False][2] for _, r in rows)
    t_on = sum(r[True][2] for _, r in rows)
    print(f"reconstruction time, all files: off {t_off:.1f} s, mirror {t_on:.1f} s "
          f"({t_on / t_off:.2f}x)")
    for mirror in (False, True):
        img = rows[0][1][mirror][3]
        cmp = compare(img[32:], label[32:], pixel_size=0.24, register=False, crop=2)
        print(f"MoS2 unseen half vs label, {'mirror' if mirror else 'off'}: r {cmp.pearson_r:.3f}, "
              f"SSIM {cmp.ssim:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
