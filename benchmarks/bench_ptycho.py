"""Seconds versus hours: ptychography of the MoS2 sample against the trained models' inference.

The reference is the reconstruction that made the sample's label: py4DSTEM 0.14.18 single-slice
ptychography with the settings of ``napari_4dstem_ml.simulate.ptycho_label`` (run in the peers'
environment ``benchmarks/_envs/peers``, ``make bench`` creates it), timed from reading the file
to the finished object. Against it, in this environment and on the same 64 × 64 × 128 × 128
data: ``predict`` of the trained linear model and 4D CNN (read, preprocess, model; best of
``--repeats``), and the virtual ADF for scale. Printed: seconds and the ratios.

    python benchmarks/bench_ptycho.py [--iterations 6]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS_PY = HERE / "_envs" / "peers" / "bin" / "python"
SAMPLE = ROOT / "sample_data" / "mos2_monolayer.h5"

PTYCHO = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from ptycho_label import PtychoSettings, reconstruct
t0 = time.perf_counter()
lab = reconstruct(sys.argv[2], PtychoSettings(num_iter=int(sys.argv[3])), log=lambda *a: None)
print(json.dumps({"seconds": time.perf_counter() - t0, "shape": list(lab.phase.shape)}))
"""


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
    ap.add_argument("--iterations", type=int, default=6, help="ptychography iterations (label: 6)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--linear", type=Path, default=HERE / "_data" / "models" / "linear.pt")
    ap.add_argument("--cnn", type=Path, default=HERE / "_data" / "models" / "conv4d.pt")
    a = ap.parse_args()
    import numpy as np

    from napari_4dstem_ml.detectors import annular_mask, virtual_images
    from napari_4dstem_ml.io import load
    from napari_4dstem_ml.parallel import find_centre
    from napari_4dstem_ml.predict import predict
    from napari_4dstem_ml.training.checkpoint import load_checkpoint

    if not (a.linear.exists() and a.cnn.exists()):
        sys.path.insert(0, str(HERE))
        from bench_scale import ensure_models

        a.linear, a.cnn = ensure_models()
    ds = load(SAMPLE)
    data = np.asarray(ds.data)  # in RAM, as ptychography holds it
    mem = type(ds)(data, ds.calibration, source=ds.source, reader=ds.reader)
    times = {}
    for name, path in (("linear", a.linear), ("cnn", a.cnn)):
        m = load_checkpoint(path)
        times[name] = best(lambda m=m: predict(m.model, m.preprocessor, mem), a.repeats)
    c = find_centre(mem)
    adf = annular_mask(ds.detector_shape, c, 30, 60)  # px: about 25-50 mrad
    times["adf"] = best(lambda: virtual_images(data, adf), a.repeats)
    n = ds.scan_shape[0] * ds.scan_shape[1]
    print(f"MoS2 sample {ds.shape}: inference in this environment (best of {a.repeats})")
    for k, t in times.items():
        print(f"  {k:7} {t:8.3f} s  ({n / t:,.0f} patterns/s)")
    if not PEERS_PY.exists():
        print(f"no peers' environment at {PEERS_PY}: run `make bench` to create it")
        return
    print(f"py4DSTEM ptychography ({a.iterations} iterations, the label's settings) ...", flush=True)
    out = subprocess.run([str(PEERS_PY), "-c", PTYCHO, str(ROOT / "src" / "napari_4dstem_ml" / "simulate"),
                          str(SAMPLE), str(a.iterations)], capture_output=True, text=True)
    if out.returncode != 0:
        print(f"ptychography failed:\n{out.stderr[-2000:]}")
        return
    res = json.loads(out.stdout.strip().splitlines()[-1])
    t_p = res["seconds"]
    print(f"  ptychography {t_p:8.1f} s  (object {res['shape'][0]} x {res['shape'][1]})")
    for k in ("linear", "cnn"):
        print(f"ptychography / {k} inference = {t_p / times[k]:,.0f}x")


if __name__ == "__main__":
    main()
