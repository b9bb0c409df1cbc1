"""Inference throughput of the models (patterns/s) through ``predict_field``.

Default 4D CNN on 64×64 preprocessed patterns over a scan tile (default 64×64 output
positions): ``predict_field`` (fully convolutional; each pattern through the first layer once)
against the naive per-cluster ``forward`` (baseline measured in the same run, on a subset),
plus the linear model's factorised ``predict_field``; on a CUDA device also the GPU rate.
Targets: ≥ 1,100 patterns/s on CPU with 2 torch threads, ≥ 10,000 patterns/s on a GPU.

    python benchmarks/bench_cnn_inference.py [--scan 64] [--det 64] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from napari_4dstem_ml.models import CNN4dConfig, LinearConfig, build_model

CPU_TARGET = 1_100
GPU_TARGET = 10_000


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


def clusters(tile: torch.Tensor, k: int, rows: int) -> torch.Tensor:
    """The first ``rows`` rows of K×K clusters of the tile, (rows*Nx, K, K, ky, kx)."""
    c = tile[: rows + k - 1].unfold(0, k, 1).unfold(1, k, 1)  # (rows, Nx, ky, kx, K, K)
    return c.permute(0, 1, 4, 5, 2, 3).reshape(-1, k, k, *tile.shape[2:]).contiguous()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scan", type=int, default=64, help="output positions per side")
    ap.add_argument("--det", type=int, default=64, help="detector pixels per side")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--naive-rows", type=int, default=4, help="scan rows for the naive baseline")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n, det = args.scan, (args.det, args.det)
    cfg = CNN4dConfig()
    k = cfg.cluster_size
    tile = torch.randn(n + k - 1, n + k - 1, *det)
    npat = n * n
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {cfg}")
    print(f"tile {tuple(tile.shape)} → {n}×{n} outputs ({npat} patterns)")

    cnn = build_model(cfg, det).eval()
    lin = build_model(LinearConfig(cluster_size=k), det).eval()
    with torch.inference_mode():
        t_field = best_time(lambda: cnn.predict_field(tile), args.repeats)
        rows = min(args.naive_rows, n)
        batch = clusters(tile, k, rows)
        t_naive = best_time(lambda: cnn(batch), max(1, args.repeats - 1)) * n / rows
        err = (cnn.predict_field(tile[: rows + k - 1])[:rows].ravel() - cnn(batch)).abs().max()
        t_lin = best_time(lambda: lin.predict_field(tile), args.repeats)
    rate = npat / t_field
    verdict = "meets" if rate >= CPU_TARGET else "MISSES"
    print(
        f"CNN predict_field (CPU):   {rate:10.0f} patterns/s  ({t_field * 1e3:.0f} ms) "
        f"{verdict} target {CPU_TARGET}/s"
    )
    print(
        f"CNN per-cluster forward:   {npat / t_naive:10.0f} patterns/s  "
        f"(extrapolated from {rows} rows); predict_field is {t_naive / t_field:.1f}× faster; "
        f"max |difference| {float(err):.2e}"
    )
    print(f"linear predict_field (CPU): {npat / t_lin:9.0f} patterns/s  ({t_lin * 1e3:.1f} ms)")

    if torch.cuda.is_available():
        dev = torch.device("cuda")
        cnn_g = build_model(cfg, det).eval().to(dev)
        tile_g = torch.randn(4 * n + k - 1, 4 * n + k - 1, *det, device=dev)
        with torch.inference_mode():
            t_g = best_time(lambda: cnn_g.predict_field(tile_g), args.repeats)
        rate_g = (4 * n) ** 2 / t_g
        verdict = "meets" if rate_g >= GPU_TARGET else "MISSES"
        print(
            f"CNN predict_field (GPU {torch.cuda.get_device_name()}): {rate_g:.0f} patterns/s "
            f"{verdict} target {GPU_TARGET}/s"
        )
    else:
        print("no CUDA device: GPU throughput not measured")


if __name__ == "__main__":
    main()
