"""How much does a trained model lose when the detector ends early? (issue 17: measure the
tolerance of the "detector reach" domain check rather than assume it.)

The detector of each held-out file is cropped to a square about the bright-field disk whose
inscribed circle reaches R α, for R from the file's own reach down to 1.2 α; the model
(as trained by ``stemml train``, e.g. ``benchmarks/_out/transfer/default_conv4d.pt``) and the
classical images (ADF within reach, iCoM) are recomputed on the cropped data and scored at the
label's resolution (r against the truth blurred by ``LABEL_SIGMA_A``; on the MoS2 sample, r
against its ptychography label on the unseen lower half).

Files: the bundled MoS2 sample (the training sample's unseen half) and any simulated
``--heldout`` files with ``ground_truth/potential`` (never the transfer suite's: this sets a
check's tolerance). Prints one line per (file, R) and writes ``--out`` JSON.

    python benchmarks/reach_tolerance.py --checkpoint benchmarks/_out/transfer/default_conv4d.pt \
        --heldout /tmp/own_heldout/ws2_30mrad_check.h5
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    from references import label_truth

    from napari_4dstem_ml.baselines import classical_baselines
    from napari_4dstem_ml.domain import DataSignature
    from napari_4dstem_ml.io import load
    from napari_4dstem_ml.metrics import compare
    from napari_4dstem_ml.predict.events import finish as drain
    from napari_4dstem_ml.samples import load_sample, sample_path
    from napari_4dstem_ml.training.checkpoint import load_checkpoint
    from napari_4dstem_ml.training.trust import crop_to_reach
    from napari_4dstem_ml.workflow import reconstruct, registered_label

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", action="append", required=True,
                    help="model checkpoint(s) to measure (repeatable)")
    ap.add_argument("--heldout", action="append", default=[], help="simulated file(s) with ground truth")
    ap.add_argument("--reach", default="full,2.2,2.0,1.8,1.6,1.4,1.2",
                    help="reaches in α ('full' = the file's own)")
    ap.add_argument("--out", default="benchmarks/_out/reach_tolerance.json")
    args = ap.parse_args(argv)

    models = {Path(c).stem: load_checkpoint(c) for c in args.checkpoint}
    cases = []
    mos2 = load_sample("mos2")
    lab = drain(registered_label(mos2.dataset, sample_path("mos2"), dataset_name="label/image"))[0]
    cases.append(("mos2 unseen half", mos2.dataset, lab, slice(32, None), False))
    for h in args.heldout:
        ds = load(h, dataset="datacube/data")
        cases.append((Path(h).stem, ds, label_truth(Path(h)),  # blurred before sampling
                      slice(None), True))

    rows = []
    for name, ds, ref, rows_sel, register in cases:
        step = ds.calibration.scan_step_A[0]
        for token in args.reach.split(","):
            cds = ds if token == "full" else crop_to_reach(ds, float(token))
            if cds is None:
                continue
            reach = DataSignature.from_dataset(cds).reach_alpha
            base = classical_baselines(cds)
            images = {"ADF": base.adf, "iCoM": base.icom}
            for mname, lm in models.items():
                images[mname] = drain(reconstruct(lm, cds)).image
            scores = {}
            for k, img in images.items():
                c = compare(img[rows_sel], ref[rows_sel], pixel_size=step, register=register, crop=2)
                scores[k] = float(c.pearson_r)
            rows.append({"file": name, "reach_alpha": reach, "r": scores})
            print(f"{name:24s} reach {reach:4.2f} α  " +
                  "  ".join(f"{k} {v:.3f}" for k, v in scores.items()), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
