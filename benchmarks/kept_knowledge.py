"""What does fine-tuning make the CNN forget? (issue 17: a fine-tuned network keeps the base
library's domain only where that is measured.)

On every item of the base library (``benchmarks/make_library.py``), on its validation rows
(the lower 20 % of the scan, which the base model never trained on; the positions
``training.trust.versus_classical`` scores), Pearson r against the item's label (the 0.4 Å
low-passed potential) of: the shipped base CNN, the CNN fine-tuned on MoS2 as ``stemml train``
does (``--tuned``, e.g. ``benchmarks/_out/transfer/default_conv4d.pt``), ADF and iCoM of the
whole data set. Prints one line per item and the largest losses.

    python benchmarks/kept_knowledge.py --tuned benchmarks/_out/transfer/default_conv4d.pt
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def main(argv=None) -> int:
    from napari_4dstem_ml.base_model import load_base_model
    from napari_4dstem_ml.base_model.recipe import library_items
    from napari_4dstem_ml.training.checkpoint import load_checkpoint
    from napari_4dstem_ml.training.clusters import RegionSplit
    from napari_4dstem_ml.training.trust import ValidationSlab, versus_classical

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tuned", required=True, help="the fine-tuned CNN checkpoint")
    ap.add_argument("--library", default="benchmarks/_data/library")
    args = ap.parse_args(argv)
    base, tuned = load_base_model("conv4d"), load_checkpoint(args.tuned)
    items, _, handles = library_items(args.library)
    losses = []
    try:
        for it in items:
            t0 = time.time()
            _, va = (it.split or RegionSplit()).region_masks(it.dataset.scan_shape)
            va = np.asarray(va, bool)
            # the positions the training's own measurement scores, read once for both models
            slab = ValidationSlab.take(base.model, it.dataset, it.label, va)
            vb, vt = (versus_classical(m.model, m.preprocessor, it.dataset, it.label, va, slab=slab)
                      for m in (base, tuned))
            ra = float("nan") if vb.r_adf is None else vb.r_adf
            losses.append((vt.r_model - vb.r_model, it.name))
            print(f"{it.name:28s} base {vb.r_model:.3f}  fine-tuned {vt.r_model:.3f}  "
                  f"ADF {ra:.3f}  iCoM {vb.r_icom:.3f}  ({time.time() - t0:.0f} s)", flush=True)
    finally:
        for f in handles:
            f.close()
    d = np.array([v for v, _ in losses])
    print(f"fine-tuned − base: median {np.median(d):+.3f}; within 0.02 on {int(np.sum(d >= -0.02))} "
          f"of {len(d)}; largest losses: " +
          ", ".join(f"{n} {v:+.3f}" for v, n in sorted(losses)[:3]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
