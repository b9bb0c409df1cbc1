"""Benchmark of the virtual-detector engine against baselines measured in the same run.

Prints seconds (median of --repeats), GB/s and patterns/s for: the engine (float32 and uint16 in
RAM, float32 from a page-cached .npy memmap and from a chunked HDF5 file, ten detectors in one
pass), plain NumPy row-chunked matmul, the machine's multi-threaded read bandwidth, and the peers
LiberTEM (ApplyMasksUDF, InlineJobExecutor) and py4DSTEM (get_virtual_image, annular) when their
venv ``benchmarks/_envs/peers`` exists (run there by subprocess on the same files). Then the
ratios against the targets. Data files go to ``benchmarks/_data`` (git-ignored).

    python benchmarks/bench_virtual_detectors.py --size 128 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA_DIR = HERE / "_data"
PEERS_PY = HERE / "_envs" / "peers" / "bin" / "python"


def timeit(fn, repeats: int) -> float:
    fn()  # warm-up (numba compile, page cache, BLAS threads)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def read_bandwidth(nbytes: int, repeats: int) -> float:
    """GB/s of a multi-threaded sum (one NumPy sum per core, threads) over ``nbytes`` of float32."""
    from concurrent.futures import ThreadPoolExecutor

    a = np.ones(nbytes // 4, np.float32)
    nt = os.cpu_count() or 1
    parts = np.array_split(a, nt * 8)
    with ThreadPoolExecutor(nt) as ex:
        t = timeit(lambda: sum(ex.map(np.sum, parts)), repeats)
    return a.nbytes / t / 1e9


def rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) in MB of this process."""
    cur = peak = 0.0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = float(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = float(line.split()[1]) / 1024
    return cur, peak


def peak_memory_child(path: str, kind: str, mask_path: str) -> dict:
    """Run the engine in a fresh process on a file; report peak RSS above its baseline."""
    code = f"""
import json, numpy as np, h5py
from napari_4dstem_ml.detectors.engine import virtual_images
import napari_4dstem_ml.detectors._kernels  # compile/load before the baseline
def rss_mb():
    v = {{}}
    for line in open('/proc/self/status'):
        if line.startswith(('VmRSS:', 'VmHWM:')):
            v[line[:5]] = float(line.split()[1]) / 1024
    return v['VmRSS'], v['VmHWM']
m = np.load({mask_path!r})
virtual_images(np.zeros((2, 2, *m.shape), np.float32), m)
virtual_images(np.zeros((2, 2, *m.shape), np.uint16), m)
base = rss_mb()[0]
if {kind!r} == 'npy':
    d = np.load({path!r}, mmap_mode='r')
    virtual_images(d, m)
else:
    with h5py.File({path!r}, 'r') as f:
        virtual_images(f['data'], m)
print(json.dumps({{'base_mb': base, 'peak_mb': rss_mb()[1]}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


PEER_CODE = r"""
import json, sys, time, statistics, numpy as np
args = json.loads(sys.argv[1])
res = {}
mask = np.load(args['mask'])
def med(fn, r):
    fn(); ts = []
    for _ in range(r):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)
try:
    from libertem.api import Context
    from libertem.executor.inline import InlineJobExecutor
    from libertem.udf.masks import ApplyMasksUDF
    ctx = Context(executor=InlineJobExecutor())
    udf = lambda: ApplyMasksUDF(mask_factories=[lambda: mask])
    ds_npy = ctx.load('npy', path=args['npy'])
    res['libertem_npy'] = med(lambda: ctx.run_udf(dataset=ds_npy, udf=udf()), args['repeats'])
    ds_h5 = ctx.load('hdf5', path=args['h5'], ds_path='data')
    res['libertem_h5'] = med(lambda: ctx.run_udf(dataset=ds_h5, udf=udf()), args['repeats'])
    ds_mem = ctx.load('memory', data=np.load(args['npy']))
    res['libertem_ram'] = med(lambda: ctx.run_udf(dataset=ds_mem, udf=udf()), args['repeats'])
except Exception as e:
    res['libertem_error'] = repr(e)[:300]
try:
    import py4DSTEM
    dc = py4DSTEM.DataCube(data=np.load(args['npy']))
    c, ri, ro = args['annulus']
    res['py4dstem_ram'] = med(lambda: dc.get_virtual_image(
        mode='annulus', geometry=(tuple(c), (ri, ro)), name='v', verbose=False), args['repeats'])
except Exception as e:
    res['py4dstem_error'] = repr(e)[:300]
print(json.dumps(res))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256, help="scan side (default 256)")
    ap.add_argument("--det", type=int, default=128, help="detector side (default 128)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="scan 64, 1 repeat, no peers")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--keep-files", action="store_true", help="keep benchmarks/_data files")
    a = ap.parse_args(argv)
    if a.quick:
        a.size, a.repeats, a.no_peers = 64, 1, True

    from napari_4dstem_ml.detectors.engine import virtual_images
    from napari_4dstem_ml.detectors.geometry import annular_mask

    n, k = a.size, a.det
    shape = (n, n, k, k)
    nbytes = int(np.prod(shape)) * 4
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(DATA_DIR).free
    if free < 3 * nbytes:
        print(f"not enough disk space in {DATA_DIR}: {free / 1e9:.1f} GB free, need {3 * nbytes / 1e9:.1f}")
        return 1
    centre = (k / 2 - 0.37, k / 2 + 0.21)
    r_in, r_out = 0.2 * k, 0.45 * k
    mask = annular_mask((k, k), centre, r_in, r_out)
    masks10 = np.stack([annular_mask((k, k), centre, 0.045 * k * i, 0.045 * k * (i + 1)) for i in range(10)])
    print(f"data {shape} float32 {nbytes / 1e9:.2f} GB; annulus {r_in:.1f}-{r_out:.1f} px; "
          f"threads: numba {os.environ.get('NUMBA_NUM_THREADS', 'all')}, cpus {os.cpu_count()}")

    rng = np.random.default_rng(0)
    d32 = np.empty(shape, np.float32)
    for y in range(n):
        d32[y] = rng.random((n, k, k), dtype=np.float32) * 1000
    d16 = d32.astype(np.uint16)

    rows: list[tuple[str, float, float]] = []  # (name, seconds, bytes)

    def add(name: str, t: float, b: int) -> float:
        rows.append((name, t, b))
        print(f"  {name:42s} {t:8.4f} s {b / t / 1e9:7.2f} GB/s {n * n / t:12.0f} patterns/s", flush=True)
        return t

    bw = read_bandwidth(min(2 * 2**30, max(nbytes, 256 * 2**20)), a.repeats)
    print(f"  {'read bandwidth (numba parallel sum)':42s} {bw:17.2f} GB/s")

    def numpy_rows():
        m = mask.reshape(-1)
        out = np.empty((n, n), np.float32)
        rb = max(1, (64 << 20) // (n * k * k * 4))
        for y in range(0, n, rb):
            out[y : y + rb] = (d32[y : y + rb].reshape(-1, k * k) @ m).reshape(-1, n)
        return out

    t_np = add("numpy row-chunked matmul, float32 RAM", timeit(numpy_rows, a.repeats), nbytes)
    t_f32 = add("engine float32 RAM", timeit(lambda: virtual_images(d32, mask), a.repeats), nbytes)
    t_u16 = add("engine uint16 RAM", timeit(lambda: virtual_images(d16, mask), a.repeats), nbytes // 2)
    t_10 = add("engine float32 RAM, 10 detectors", timeit(lambda: virtual_images(d32, masks10), a.repeats), nbytes)
    add("engine uint16 RAM, 10 detectors", timeit(lambda: virtual_images(d16, masks10), a.repeats), nbytes // 2)
    sub = d16[: max(1, n // 16)]
    ref = np.tensordot(sub.astype(np.float64), mask.astype(np.float64), axes=([2, 3], [0, 1]))
    err = float(np.max(np.abs(virtual_images(sub, mask) - ref)) / np.max(np.abs(ref)))

    npy = DATA_DIR / f"bench_{n}_{k}.npy"
    h5 = DATA_DIR / f"bench_{n}_{k}.h5"
    mask_path = DATA_DIR / f"bench_mask_{k}.npy"
    np.save(mask_path, mask)
    np.save(npy, d32)
    import h5py

    with h5py.File(h5, "w") as f:
        rows_per_chunk = max(1, (16 << 20) // (n * k * k * 4))
        f.create_dataset("data", data=d32, chunks=(rows_per_chunk, n, k, k))
    d16 = None  # free before the file cases

    def from_npy():
        return virtual_images(np.load(npy, mmap_mode="r"), mask)

    def from_h5():
        with h5py.File(h5, "r") as f:
            return virtual_images(f["data"], mask)

    t_npy = add("engine float32 page-cached .npy (memmap)", timeit(from_npy, a.repeats), nbytes)
    t_h5 = add("engine float32 chunked HDF5", timeit(from_h5, a.repeats), nbytes)
    mem_npy = peak_memory_child(str(npy), "npy", str(mask_path))
    mem_h5 = peak_memory_child(str(h5), "h5", str(mask_path))
    for name, mem in (("npy", mem_npy), ("HDF5", mem_h5)):
        print(f"  peak RSS above baseline, {name}: {mem['peak_mb'] - mem['base_mb']:.0f} MB")

    peers: dict = {}
    if not a.no_peers:
        if PEERS_PY.exists():
            d32 = None
            arg = {"npy": str(npy), "h5": str(h5), "mask": str(mask_path), "repeats": a.repeats,
                   "annulus": [list(centre), r_in, r_out]}
            p = subprocess.run([str(PEERS_PY), "-c", PEER_CODE, json.dumps(arg)], capture_output=True,
                               text=True, timeout=3600)
            try:
                peers = json.loads(p.stdout.strip().splitlines()[-1])
            except (IndexError, json.JSONDecodeError):
                print("  peers failed:", p.stderr[-800:])
            for key, label, b in (("libertem_ram", "LiberTEM ApplyMasksUDF, float32 RAM", nbytes),
                                  ("libertem_npy", "LiberTEM ApplyMasksUDF, .npy", nbytes),
                                  ("libertem_h5", "LiberTEM ApplyMasksUDF, HDF5", nbytes),
                                  ("py4dstem_ram", "py4DSTEM get_virtual_image, float32 RAM", nbytes)):
                if key in peers:
                    add(label, peers[key], b)
            for key in ("libertem_error", "py4dstem_error"):
                if key in peers:
                    print(f"  {key}: {peers[key]}")
        else:
            print(f"  peers skipped: no venv at {PEERS_PY}")

    print("\nratios against targets")
    checks = [
        ("float32 RAM / BLAS row-chunked product", t_np / t_f32, 0.9),
        ("uint16 RAM / read bandwidth on 2-byte data", (nbytes / 2 / t_u16 / 1e9) / bw, 0.7),
        ("page-cached .npy / in-RAM", t_f32 / t_npy, 0.8),
        ("10 detectors time / 1 detector (<= 2)", t_10 / t_f32, None),
    ]
    if "libertem_h5" in peers:
        checks.append(("HDF5: LiberTEM time / engine time", peers["libertem_h5"] / t_h5, 3.0))
    for name, v, target in checks:
        if target is None:
            ok = v <= 2.0
            print(f"  {name:48s} {v:6.2f}  target <= 2.00  {'ok' if ok else 'MISSED'}")
        else:
            print(f"  {name:48s} {v:6.2f}  target >= {target:.2f}  {'ok' if v >= target else 'MISSED'}")
    worst = max(m["peak_mb"] - m["base_mb"] for m in (mem_npy, mem_h5))
    print(f"  {'on-disk peak memory above baseline (MB)':48s} {worst:6.0f}  target < 1000  "
          f"{'ok' if worst < 1000 else 'MISSED'}")
    print(f"  uint16 engine vs float64-exact numpy: max rel. error {err:.2e}")
    if not a.keep_files:
        for p in (npy, h5, mask_path):
            p.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
