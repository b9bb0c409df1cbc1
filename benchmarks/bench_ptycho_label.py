"""Making the label here: ptychography of the MoS2 sample inside the plugin against the trained
models' inference on the same data, and the label's r against the ground truth.

One run, in this environment, on the bundled MoS2 sample (64 × 64 × 128 × 128, simulated by
abTEM, so its exact projected potential is known):

* ``reconstruct_label`` with the default :class:`~napari_4dstem_ml.ptycho.PtychoConfig`
  (quantem, single-slice, 8 iterations, detector binned 2 × 2 and padded to 128): wall time of
  the label (the full reconstruction) and of the two half-data reconstructions for the FRC;
* ``predict`` of the linear model and the 4D CNN ensemble (read, preprocess, model; best of
  ``--repeats``). By default the shipped base models: the defaults fine-tune them, which
  changes their weights, not their cost; ``--linear``/``--cnn`` take trained checkpoints;
* the label's Pearson r against the ground-truth potential, low-passed to the label's
  resolution and raw, and the bundled py4DSTEM label's r scored the same way.

``--thin FILE`` also reconstructs another simulated thin sample with its ground truth (e.g. the
transfer suite's WS2 item, ``benchmarks/make_transfer_suite.py``, never used to choose the
settings) and scores it the same way (``--skip-mos2``: only that).

Printed: seconds, ratios (ptychography / inference) and r; written to
``benchmarks/_out/ptycho_label/results.json`` (``thin.json`` for ``--thin``).

    nice -n 10 python benchmarks/bench_ptycho_label.py [--iterations 8] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "_out" / "ptycho_label"


def best(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    ap.add_argument("--linear", type=Path, help="a trained linear checkpoint (default: base model)")
    ap.add_argument("--cnn", type=Path, help="a trained CNN checkpoint (default: base model)")
    ap.add_argument("--thin", type=Path, help="another simulated thin sample (HDF5 with "
                    "/ground_truth/potential) to score the label on")
    ap.add_argument("--skip-mos2", action="store_true", help="only the --thin sample")
    a = ap.parse_args()
    if a.thin:
        thin(a.thin, a.iterations, a.device)
    if a.skip_mos2:
        return

    import torch

    from napari_4dstem_ml.base_model import load_base_model
    from napari_4dstem_ml.predict import predict
    from napari_4dstem_ml.ptycho import PtychoConfig, PtychoLabel, reconstruct_label
    from napari_4dstem_ml.ptycho.quality import truth_score
    from napari_4dstem_ml.registration import label_coordinates
    from napari_4dstem_ml.samples import load_sample
    from napari_4dstem_ml.training.checkpoint import load_checkpoint

    s = load_sample("mos2")
    ds = s.dataset
    data = np.asarray(ds.data)  # in RAM, as ptychography holds it
    mem = type(ds)(data, ds.calibration, source=ds.source, reader=ds.reader)
    step = ds.calibration.scan_step_A[0]
    device = "cuda" if a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available()) else "cpu"
    print(f"MoS2 sample {ds.shape}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"device {device}", flush=True)

    times: dict[str, float] = {}
    for name, path, kind in (("linear", a.linear, "linear"), ("cnn", a.cnn, "conv4d")):
        m = load_checkpoint(path) if path else load_base_model(kind)
        times[name] = best(lambda m=m: predict(m.model, m.preprocessor, mem, device=device), a.repeats)
        print(f"  {name} inference {times[name]:8.3f} s", flush=True)

    cfg = PtychoConfig(iterations=a.iterations, device=a.device)
    t0 = time.perf_counter()
    t_full = None
    label = None
    for ev in reconstruct_label(mem, cfg, ground_truth=s.ground_truth):
        if isinstance(ev, PtychoLabel):
            label = ev
            continue
        if ev.stage == "full" and ev.iteration == ev.total:
            t_full = time.perf_counter() - t0
        if ev.iteration:
            print(f"  {ev.stage} {ev.iteration}/{ev.total}: loss {ev.loss:.4g}, "
                  f"{ev.elapsed_s:.0f} s", flush=True)
    t_all = time.perf_counter() - t0
    q = label.quality
    print(f"ptychography ({cfg.backend} {label.backend_version}, {a.iterations} iterations): "
          f"label {t_full:.1f} s, with the half-data FRC {t_all:.1f} s")
    for k in ("linear", "cnn"):
        print(f"ptychography / {k} inference = {t_full / times[k]:,.0f}x  "
              f"(with the FRC halves {t_all / times[k]:,.0f}x)")
    print(f"label: {q.summary()}")
    for w in q.warnings:
        print(f"warning: {w}")

    # the bundled py4DSTEM label, scored the same way (resampled at the scan positions from
    # its pixel size and origin; its resolution taken as ours)
    ny, nx = ds.scan_shape
    lab = s.label
    scale = s.label_pixel_size_A / step
    c_label = (np.array(lab.shape) - 1) / 2 * s.label_pixel_size_A + np.array(s.label_origin_A)
    shift = tuple(c_label / step - (np.array([ny, nx]) - 1) / 2)
    from scipy import ndimage

    coords = label_coordinates((ny, nx), lab.shape, scale, 0.0, shift)
    p4 = ndimage.map_coordinates(lab.astype(np.float64), coords, order=3)
    ref = truth_score(p4, s.ground_truth, step, q.resolution_A)
    print(f"bundled py4DSTEM label (6 iterations, bin 2, pad 256): r {ref.r_at_resolution:.3f} at "
          f"{ref.resolution_A:.2f} Å ({ref.r_raw:.3f} raw)")

    OUT.mkdir(parents=True, exist_ok=True)
    res = {"device": device, "torch_threads": torch.get_num_threads(),
           "backend": label.backend, "backend_version": label.backend_version,
           "config": cfg.to_dict(), "label_seconds": t_full, "with_frc_seconds": t_all,
           "inference_seconds": times,
           "ratio_label_over_inference": {k: t_full / v for k, v in times.items()},
           "quality": q.to_dict(), "losses": label.losses,
           "py4dstem_label": {"r_at_resolution": ref.r_at_resolution, "r_raw": ref.r_raw}}
    (OUT / "results.json").write_text(json.dumps(res, indent=1, default=float))
    print(f"wrote {OUT / 'results.json'}")


def thin(path: Path, iterations: int, device: str) -> None:
    """The default label of another simulated thin sample, scored against its ground truth."""
    import h5py

    from napari_4dstem_ml.io import load
    from napari_4dstem_ml.ptycho import PtychoConfig, PtychoLabel, reconstruct_label

    ds = load(path)
    with h5py.File(path, "r") as f:
        truth = f["ground_truth/potential"][()]
    cfg = PtychoConfig(iterations=iterations, device=device)
    t0 = time.perf_counter()
    label = None
    for ev in reconstruct_label(ds, cfg, ground_truth=truth):
        if isinstance(ev, PtychoLabel):
            label = ev
    t = time.perf_counter() - t0
    q = label.quality
    print(f"{path.name} {ds.shape}: {t:.0f} s with the FRC halves; {q.summary()}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "thin.json").write_text(json.dumps(
        {"file": path.name, "shape": list(ds.shape), "seconds_with_frc": t, "config": cfg.to_dict(),
         "quality": q.to_dict()}, indent=1, default=float))


if __name__ == "__main__":
    main()
