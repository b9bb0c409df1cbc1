"""Linear-model inference throughput against a virtual detector on the same data.

The linear model factorises into one virtual image with its learned mask, then a K×K
convolution, so its inference should run at virtual-detector speed (target: ≥ 50 % of the
virtual detector's patterns/s). Both are timed in one run on the same in-RAM uint16 counts,
the linear model through the public ``predict`` (preprocessing mapped onto the raw
detector), the virtual detector through ``virtual_images`` with an ADF annulus.

    python benchmarks/bench_linear_inference.py [--scan 256] [--det 128] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def median_time(fn, repeats: int, pause: float = 0.3) -> float:
    """Median seconds of ``fn``, each call after ``pause`` s idle (as in
    ``bench_virtual_detectors.py``: no case inherits spinning threads from the one before)."""
    times = []
    for _ in range(repeats):
        time.sleep(pause)
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scan", type=int, default=256, help="scan positions per side")
    ap.add_argument("--det", type=int, default=128, help="detector pixels per side")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    from napari_4dstem_ml.dataset import Calibration, Dataset4D
    from napari_4dstem_ml.detectors import annular_mask, virtual_images
    from napari_4dstem_ml.models import LinearConfig, build_model
    from napari_4dstem_ml.predict import predict
    from napari_4dstem_ml.predict.linear import linear_on_raw_detector
    from napari_4dstem_ml.preprocess import PreprocessConfig, Preprocessor

    n, k = args.scan, args.det
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:k, :k] - (k - 1) / 2
    disk = (np.hypot(yy, xx) < k / 5).astype(np.float32) * 40 + 0.5
    data = np.empty((n, n, k, k), np.uint16)
    for i in range(n):  # Poisson counts around a bright-field disk, row by row
        data[i] = rng.poisson(disk, size=(n, k, k))
    ds = Dataset4D(data, Calibration(scan_step=(0.2, 0.2), detector_pixel=(0.84, 0.84),
                                     energy_ev=80e3, convergence_mrad=21.4))
    gb = data.nbytes / 1e9
    print(f"data {data.shape} uint16 in RAM, {gb:.2f} GB; load average {os.getloadavg()[0]:.2f}")

    cfg = PreprocessConfig(max_angle=0.5 * k * 0.84, output_shape=(64, 64),
                           output_pixel=k * 0.84 / 64)
    pre = Preprocessor.fit(ds, cfg).with_label_stats(0.0, 1.0)
    model = build_model(LinearConfig(cluster_size=5, mask_init="random"), pre.output_shape)
    assert linear_on_raw_detector(model, pre, ds)
    adf = annular_mask((k, k), ((k - 1) / 2, (k - 1) / 2), 30, 60)

    virtual_images(data, adf)  # warm up (numba compilation, page faults)
    predict(model, pre, ds)
    t_vd = median_time(lambda: virtual_images(data, adf), args.repeats)
    t_lin = median_time(lambda: predict(model, pre, ds), args.repeats)
    npat = n * n
    print(f"virtual detector (ADF)      {t_vd:7.3f} s  {npat / t_vd / 1e6:6.3f} M patterns/s  "
          f"{gb / t_vd:6.1f} GB/s")
    print(f"linear model predict (K=5)  {t_lin:7.3f} s  {npat / t_lin / 1e6:6.3f} M patterns/s  "
          f"{gb / t_lin:6.1f} GB/s")
    ratio = t_vd / t_lin
    verdict = "PASS" if ratio >= 0.5 else "FAIL"
    print(f"linear / virtual-detector throughput = {ratio:.2f} (target >= 0.50): {verdict}")


if __name__ == "__main__":
    main()
