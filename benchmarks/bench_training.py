"""Training benchmark: time to reach within 5 % of the best validation loss, and metrics.

Trains the linear model and the 4D CNN on the MoS2 sample (``sample_data/mos2_*.h5``, loaded
with ``napari_4dstem_ml.io.load``; the label is the file's 2D data set on the scan grid whose
name mentions label/ptycho/phase/potential) when it exists, else on synthetic data of a similar
size (``--scan``/``--detector``). Upper half trains, lower half validates.

Baseline measured in the same run: the best least-squares combination of a bright-field and an
annular dark-field virtual image (a "two-detector" linear model without clusters), fitted on
the training half and scored on the validation half.

    python benchmarks/bench_training.py                 # full size (lead: quiet machine)
    python benchmarks/bench_training.py --quick         # small, to check the script works
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def find_label(path: str, scan_shape: tuple[int, int]) -> np.ndarray | None:
    import h5py

    found: list[tuple[int, str]] = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.ndim == 2 and tuple(obj.shape) == tuple(scan_shape):
            score = any(w in name.lower() for w in ("label", "ptycho", "phase", "potential"))
            found.append((0 if score else 1, name))

    with h5py.File(path, "r") as f:
        f.visititems(visit)
        if not found:
            return None
        return np.asarray(f[sorted(found)[0][1]], dtype=np.float32)


def load_data(args):
    files = sorted(glob.glob(str(ROOT / "sample_data" / "mos2_*.h5")))
    if files and not args.synthetic:
        from napari_4dstem_ml.io import load

        ds = load(files[0])
        label = find_label(files[0], ds.scan_shape)
        if label is not None:
            return ds, label, f"MoS2 sample {Path(files[0]).name}"
        print(f"note: {files[0]} has no 2D label on the scan grid; using synthetic data")
    from napari_4dstem_ml.training.synthetic import make_synthetic

    syn = make_synthetic(
        scan_shape=(args.scan, args.scan), detector_shape=(args.detector, args.detector),
        bf_radius_px=args.detector / 5, seed=0,
    )
    return syn.dataset, syn.label, f"synthetic {args.scan}x{args.scan} scan, {args.detector}^2 detector"


def virtual_baseline(ds, label, pre, split_masks) -> dict[str, float]:
    """Least-squares fit of label ≈ a·BF + b·ADF + c on the training half, scored on validation."""
    from napari_4dstem_ml.detectors.engine import virtual_images
    from napari_4dstem_ml.training.loop import validation_metrics

    ky, kx = ds.detector_shape
    yy, xx = np.mgrid[0:ky, 0:kx]
    r = np.hypot(yy - pre.centre[0], xx - pre.centre[1])
    mean = np.asarray(ds.data[ds.scan_shape[0] // 2, ::4], np.float64).mean(0)
    inside = mean > 0.5 * mean.max()
    r_bf = math.sqrt(inside.sum() / math.pi)
    masks = np.stack([(r <= r_bf), (r > 1.1 * r_bf)]).astype(np.float32)
    vi = virtual_images(ds.data, masks)
    tr, va = split_masks
    a = np.stack([vi[0][tr], vi[1][tr], np.ones(tr.sum())], 1)
    coef, *_ = np.linalg.lstsq(a, label[tr], rcond=None)
    pred = coef[0] * vi[0] + coef[1] * vi[1] + coef[2]
    m, s = label[tr].mean(), label[tr].std()
    out = validation_metrics(pred[va], label[va])
    out["val_loss"] = float(np.mean(((pred[va] - label[va]) / s) ** 2))
    out["mean_predictor_loss"] = float(np.mean(((label[va] - m) / s) ** 2))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small synthetic data, few epochs")
    p.add_argument("--synthetic", action="store_true", help="ignore the MoS2 sample")
    p.add_argument("--scan", type=int, default=128)
    p.add_argument("--detector", type=int, default=64)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--models", default="linear,conv4d")
    p.add_argument("--cluster", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--time-limit", type=float, default=600.0, help="seconds per model")
    args = p.parse_args(argv)
    if args.quick:
        args.scan, args.detector, args.epochs, args.synthetic = 48, 32, 10, True

    import torch

    from napari_4dstem_ml.models import CNN4dConfig, LinearConfig
    from napari_4dstem_ml.preprocess import PreprocessConfig, Preprocessor
    from napari_4dstem_ml.training.clusters import RegionSplit
    from napari_4dstem_ml.training.inference import predict
    from napari_4dstem_ml.training.loop import EpochEvent, TrainConfig, run_training

    t0 = time.perf_counter()
    ds, label, what = load_data(args)
    print(f"data: {what}; shape {ds.shape}, {ds.nbytes / 1e6:.0f} MB; loaded in {time.perf_counter() - t0:.1f} s")
    print(f"torch {torch.__version__}, threads {args.threads or os.cpu_count()}, "
          f"cuda {torch.cuda.is_available()}")
    pcfg = PreprocessConfig(output_shape=(min(64, ds.detector_shape[0]), min(64, ds.detector_shape[1])))
    t0 = time.perf_counter()
    pre = Preprocessor.fit(ds, pcfg)
    print(f"preprocessor fit: {time.perf_counter() - t0:.2f} s; centre {pre.centre}, grid {pre.output_shape}")
    split = RegionSplit()
    k = args.cluster
    masks = split.positions(ds.scan_shape, k)
    base = virtual_baseline(ds, label, pre, masks)
    print(f"baseline BF+ADF least squares: val loss {base['val_loss']:.4f} "
          f"(mean predictor {base['mean_predictor_loss']:.4f}), r {base['pearson_r']:.4f}, "
          f"PSNR {base['psnr']:.2f} dB")

    configs = {
        "linear": (LinearConfig(cluster_size=k), 1e-2),
        "conv4d": (CNN4dConfig(cluster_size=k), 1e-3),
    }
    for name in args.models.split(","):
        mc, lr = configs[name]
        tc = TrainConfig(epochs=args.epochs, lr=lr, batch_size=64, preview_every=0, patience=5,
                         num_threads=args.threads, time_limit_s=args.time_limit, seed=0)

        def show(ev, name=name):
            if isinstance(ev, EpochEvent):
                print(f"  [{name}] epoch {ev.epoch:3d}  train {ev.train_loss:.4f}  val {ev.val_loss:.4f}  "
                      f"r {ev.metrics.get('pearson_r', float('nan')):.4f}  {ev.elapsed_s:7.1f} s", flush=True)

        res = run_training(ds, label, mc, None, tc, preprocessor=pre, on_event=show)
        n_pos = res.train_summary["n_train"]
        t_within = res.time_to_within(0.05)
        t_pred = time.perf_counter()
        img = predict(res.model, res.preprocessor, ds)
        t_pred = time.perf_counter() - t_pred
        tr, va = masks
        from napari_4dstem_ml.training.loop import validation_metrics

        val = validation_metrics(img[va], label[va])
        steps_per_s = res.steps / max(res.elapsed_s, 1e-9)
        print(f"{name}: stopped {res.stopped} after {res.steps} steps ({steps_per_s:.1f} steps/s, "
              f"{steps_per_s * tc.batch_size:.0f} clusters/s, {n_pos} training positions)")
        print(f"{name}: best val loss {res.best_val_loss:.4f} at epoch {res.best_epoch}; "
              f"time to within 5 % of best: {t_within:.1f} s (target <= 600 s); total {res.elapsed_s:.1f} s")
        print(f"{name}: validation r {val['pearson_r']:.4f}, PSNR {val['psnr']:.2f} dB; "
              f"loss ratio vs BF+ADF baseline {res.best_val_loss / base['val_loss']:.3f}; "
              f"whole-field prediction {t_pred:.2f} s ({ds.scan_shape[0] * ds.scan_shape[1] / t_pred:.0f} patterns/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
