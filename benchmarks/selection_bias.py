"""How optimistic is "the MoS2 unseen half"? The default `stemml train` validates on the lower
half of the MoS2 sample and keeps the best validation epoch, and the transfer benchmark scores
that same half: the epoch is chosen on the rows it is scored on. Here the same default
fine-tune is run twice, once as shipped (validation rows 32-63) and once validating on rows
32-47 only, and both are scored against the ptychographic label on rows 48-63 — rows the second
model neither trained nor chose its epoch on. The difference is the selection's optimism.
(r only: SSIM's 11-px window leaves too few rows of a 16-row band to score.)

    python benchmarks/selection_bias.py [--models conv4d,linear] [-o DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def mos2_and_label():
    """The bundled MoS2 sample's data set and its ptychographic label registered onto the scan
    (``registered_label``'s ``(label, coverage, report)``)."""
    from napari_4dstem_ml.predict.events import finish
    from napari_4dstem_ml.samples import load_sample, sample_path
    from napari_4dstem_ml.workflow import registered_label

    ds = load_sample("mos2").dataset
    return ds, finish(registered_label(ds, sample_path("mos2"), dataset_name="label/image"))


def fine_tune(model: str, dataset, registered, split, out: Path, augment="default"):
    """The default fine-tune of ``model`` (``TrainingJob.prepare``'s configs) with ``split``
    (``None``: the default) and ``augment`` (an ``AugmentConfig``, ``None`` for none; the
    default's unless given); returns the loaded checkpoint, the epoch kept (counted from 1)
    and the epochs run."""
    from napari_4dstem_ml.predict.events import finish
    from napari_4dstem_ml.training.checkpoint import load_checkpoint, save_checkpoint
    from napari_4dstem_ml.training.loop import train
    from napari_4dstem_ml.workflow import TrainingJob

    job = TrainingJob(label="", output="", model=model)
    initial, (m, p, t) = job.prepare(dataset)
    label, coverage, _ = registered
    res = finish(train(dataset, label, m, p, t, label_mask=coverage, split=split, init=initial,
                       augment=job.augment_config() if augment == "default" else augment))
    path = save_checkpoint(out, res.model, res.model_config, res.preprocessor,
                           train_summary=res.train_summary, overwrite=True)
    return load_checkpoint(path), res.best_epoch + 1, len(res.history)


def main(argv=None) -> int:
    from napari_4dstem_ml.metrics import compare
    from napari_4dstem_ml.predict.events import finish
    from napari_4dstem_ml.training.clusters import RegionSplit
    from napari_4dstem_ml.workflow import reconstruct

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="conv4d,linear")
    ap.add_argument("-o", "--out", type=Path, default=None)
    args = ap.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="selection_bias_"))
    out.mkdir(parents=True, exist_ok=True)
    ds, registered = mos2_and_label()
    ny, nx = ds.scan_shape
    half, three_q = ny // 2, 3 * ny // 4
    splits = {"as shipped: validates on rows 32-63": RegionSplit(),
              "validates on rows 32-47 only": RegionSplit(train=(0, half, 0, nx),
                                                          val=(half, three_q, 0, nx))}
    step = ds.calibration.scan_step_A[0]
    lab = registered[0]
    print(f"| model | validation | epoch kept / epochs run | rows {three_q}-{ny - 1} vs "
          "label: r | largest weight difference from the shipped split's |")
    print("|---|---|---|---|---|")
    for model in args.models.split(","):
        first = None
        for i, (what, split) in enumerate(splits.items()):
            loaded, kept, run = fine_tune(model, ds, registered, split, out / f"{model}_{i}.pt")
            img = finish(reconstruct(loaded, ds)).image
            r = compare(img[three_q:], lab[three_q:], pixel_size=step, register=False, crop=2)
            weights = loaded.model.state_dict()
            first = first or weights
            diff = max(float((weights[k].double() - first[k].double()).abs().max()) for k in weights)
            print(f"| {model} | {what} | {kept} / {run} | {r.pearson_r:.4f} | {diff:.2g} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
