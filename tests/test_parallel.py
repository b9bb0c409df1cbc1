"""Dask distributed jobs against the in-process engine, faults, and incremental outputs.

The data files are written here by hand following the formats' specs (EMPAD: little-endian
float32 frames of 128 columns x 130 rows, two metadata rows; frame i = iy * nx + ix).
"""

from __future__ import annotations

import os
import signal
import socket
import time

import h5py
import numpy as np
import pytest
import tifffile
import torch

from napari_4dstem_ml.cli import main
from napari_4dstem_ml.dataset import Calibration, Dataset4D
from napari_4dstem_ml.detectors import annular_mask, virtual_images
from napari_4dstem_ml.io import load
from napari_4dstem_ml.models import CNN4dConfig, LinearConfig, build_model
from napari_4dstem_ml.parallel import (
    Compute,
    ParallelError,
    SchedulerUnreachable,
    find_centre,
    iter_virtual_image,
    open_client,
)
from napari_4dstem_ml.predict.fields import iter_predict_source
from napari_4dstem_ml.preprocess import PreprocessConfig, Preprocessor
from napari_4dstem_ml.training.checkpoint import save_checkpoint
from napari_4dstem_ml.training.clusters import PatternSource, cluster_indices


def run(gen):
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def patterns(ny: int, nx: int, det: int = 128, seed: int = 0) -> np.ndarray:
    """Poisson counts of a bright-field disk whose centre and brightness vary over the scan."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:det, :det]
    out = np.empty((ny, nx, det, det), np.float32)
    for y in range(ny):
        for x in range(nx):
            cy, cx = det / 2 + 0.1 * y - 1.3, det / 2 - 0.05 * x + 0.7
            disk = (np.hypot(yy - cy, xx - cx) < det / 6) * (20 + 5 * np.sin(0.7 * y + 0.4 * x))
            out[y, x] = rng.poisson(disk + 0.3)
    return out


def write_empad(path, data: np.ndarray) -> None:
    ny, nx = data.shape[:2]
    frames = np.zeros((ny, nx, 130, 128), "<f4")
    frames[:, :, :128] = data
    frames[:, :, 128:] = 7.0  # metadata rows: never read as image
    frames.tofile(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("parallel")
    data = patterns(14, 11)
    raw = d / "scan_x11_y14.raw"
    write_empad(raw, data)
    with h5py.File(d / "data.h5", "w") as f:
        ds = f.create_dataset("scan/data", data=data.astype(np.uint16), chunks=(2, 11, 128, 128),
                              compression="gzip")
        ds.attrs["detector_pixel_mrad"] = [0.84, 0.84]
        ds.attrs["scan_step_A"] = [0.2, 0.2]
        ds.attrs["energy_ev"] = 80e3
    return d, data, raw


@pytest.fixture(scope="module")
def client():
    with open_client(Compute(workers=2)) as c:
        yield c


def cnn_checkpoint(path, ds) -> tuple:
    pre = Preprocessor.fit(ds, PreprocessConfig(compression="power", bin_factor=4)).with_label_stats(
        1.5, 2.0)
    torch.manual_seed(0)
    model = build_model(CNN4dConfig(channels=(4, 4)), pre.output_shape).eval()
    save_checkpoint(path, model, model.config, pre)
    return model, pre


@pytest.mark.slow
def test_two_workers_equal_in_process(files, client, tmp_path):
    d, data, raw = files
    ds = load(raw)
    c_in, c_dist = find_centre(ds), find_centre(ds, client=client)
    assert c_in == pytest.approx(c_dist)
    masks = np.stack([annular_mask((128, 128), c_in, 10, 40), annular_mask((128, 128), c_in, 0, 12)])
    local = run(iter_virtual_image(ds, masks))
    dist = run(iter_virtual_image(ds, masks, client=client, rows_per_task=3))
    brute = np.einsum("yxij,mij->myx", data.astype(np.float64), masks)
    np.testing.assert_allclose(local, brute, rtol=1e-5)
    np.testing.assert_allclose(dist, local, rtol=1e-6)

    h5 = load(d / "data.h5")  # gzip chunks: h5py on the workers
    model, pre = cnn_checkpoint(tmp_path / "cnn.pt", h5)
    local = reconstruct(model, pre, h5)
    dist = reconstruct(model, pre, h5, client=client, rows_per_task=4)
    assert np.isfinite(local).all()
    np.testing.assert_allclose(dist, local, rtol=1e-5, atol=1e-6)

    lin = build_model(LinearConfig(cluster_size=3, mask_init="random"), pre.output_shape).eval()
    pre_lin = Preprocessor.fit(h5, PreprocessConfig(bin_factor=4)).with_label_stats(0.0, 1.0)
    np.testing.assert_allclose(reconstruct(lin, pre_lin, h5, client=client, rows_per_task=5),
                               reconstruct(lin, pre_lin, h5), rtol=1e-5, atol=1e-6)


def reconstruct(model, pre, ds, **kwargs) -> np.ndarray:
    """The pipeline's image of ``ds`` (in process, or with ``client=`` on the cluster)."""
    from types import SimpleNamespace

    from napari_4dstem_ml.predict import Reconstructor

    loaded = SimpleNamespace(model=model, preprocessor=pre, info={})
    return run(Reconstructor(loaded, ds, **kwargs).run()).image


@pytest.mark.slow
def test_cli_workers_write_the_same_image(files, tmp_path):
    d, data, raw = files
    a, b = tmp_path / "a.tif", tmp_path / "b.h5"
    assert main(["adf", str(raw), "--inner", "10", "--outer", "40", "--pixels", "-o", str(a)]) == 0
    assert main(["adf", str(raw), "--inner", "10", "--outer", "40", "--pixels", "-o", str(b),
                 "--workers", "2"]) == 0
    with h5py.File(b) as f:
        np.testing.assert_allclose(f["image"][()], tifffile.imread(a), rtol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "b.h5"]  # no temporaries


@pytest.mark.slow
def test_worker_killed_mid_job_gives_complete_image_or_clear_error(files):
    _, data, raw = files
    ds = load(raw)
    mask = annular_mask((128, 128), (64.0, 64.0), 10, 40)
    ref = virtual_images(np.asarray(ds.data), mask)
    with open_client(Compute(workers=2)) as cl:
        pids = list(cl.run(os.getpid).values())
        gen = iter_virtual_image(ds, mask, client=cl, rows_per_task=1)
        first = next(gen)
        assert first.rows_done >= 1
        os.kill(pids[0], signal.SIGKILL)
        try:
            image = run(gen)
        except ParallelError as exc:  # the clear error: no partial image comes back
            assert "worker" in str(exc)
        else:
            np.testing.assert_allclose(image, ref, rtol=1e-6)  # rescheduled: complete


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_scheduler_fails_fast(files, capsys, tmp_path):
    _, _, raw = files
    address = f"tcp://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(SchedulerUnreachable, match="no Dask scheduler reachable"):
        with open_client(Compute(scheduler=address)):
            pass
    out = tmp_path / "x.tif"
    rc = main(["adf", str(raw), "--inner", "1", "--outer", "9", "--pixels", "-o", str(out),
               "--scheduler", address])
    assert rc == 2 and time.monotonic() - t0 < 5
    assert "no Dask scheduler reachable" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(SchedulerUnreachable, match="tcp://HOST:PORT"):
        Compute(scheduler="http://nowhere")


def test_predict_strips_and_row_ranges_equal_brute_force():
    """Scans wider than one 64-column strip: tiles with reflected halos give the per-cluster
    forward pass at every position, for the whole scan and for a band of rows."""
    rng = np.random.default_rng(1)
    data = rng.poisson(3.0, size=(9, 70, 8, 8)).astype(np.uint16)
    ds = Dataset4D(data, Calibration())
    pre = Preprocessor.fit(ds, PreprocessConfig(compression="log"))
    model = build_model(CNN4dConfig(channels=(2, 2), input_pool=1, pool_det=1), (8, 8)).eval()
    src = PatternSource(ds, pre, cache_budget_bytes=0)
    ys, xs = np.mgrid[:9, :70]
    with torch.no_grad():
        clusters = torch.from_numpy(src.clusters(ys.ravel(), xs.ravel(), 5))
        brute = pre.model_to_label(model(clusters).numpy()).reshape(9, 70)
    whole = run(iter_predict_source(model, src, tile_rows=4))
    np.testing.assert_allclose(whole, brute, rtol=1e-5, atol=1e-6)
    band = run(iter_predict_source(model, src, rows=(3, 8), tile_rows=2))
    np.testing.assert_allclose(band, brute[3:8], rtol=1e-5, atol=1e-6)
    assert cluster_indices(np.array([0]), np.array([69]), 5, (9, 70))[1][0, -1] == 67  # reflected


def test_in_memory_data_is_refused_on_a_cluster():
    ds = Dataset4D(np.zeros((4, 4, 8, 8), np.float32))
    with pytest.raises(ValueError, match="cannot be opened by Dask workers"):
        run(iter_virtual_image(ds, np.ones((8, 8)), client=object()))


@pytest.mark.parametrize("suffix", [".tif", ".npy", ".h5", ".zarr", ".png"])
def test_sink_writes_blocks_in_any_order_and_only_complete_images(tmp_path, suffix):
    import zarr

    from napari_4dstem_ml.export import OutputError
    from napari_4dstem_ml.parallel.sink import image_sink

    image = np.arange(7 * 5, dtype=np.float32).reshape(7, 5) + 1
    out = tmp_path / f"img{suffix}"
    with image_sink(out, (7, 5), 0.25) as sink:
        for y0, y1 in [(4, 7), (0, 2), (2, 4)]:  # as the bands finish
            sink.write(y0, y1, image[y0:y1])
    if suffix == ".tif":
        np.testing.assert_array_equal(tifffile.imread(out), image)
    elif suffix == ".npy":
        np.testing.assert_array_equal(np.load(out), image)
    elif suffix == ".h5":
        with h5py.File(out) as f:
            np.testing.assert_array_equal(f["image"][()], image)
            assert f["image"].attrs["pixel_size_A"] == 0.25
    elif suffix == ".zarr":
        np.testing.assert_array_equal(zarr.open_array(str(out), mode="r")[:], image)
    else:
        assert out.stat().st_size > 0
    partial = tmp_path / f"partial{suffix}"
    with pytest.raises(OutputError, match="2 scan rows never arrived"):
        with image_sink(partial, (7, 5)) as sink:
            sink.write(0, 5, image[:5])
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no partial, no temporary


# -- hostile clusters (issue 21) ---------------------------------------------------------------
def test_local_cluster_listens_on_loopback_only(client):
    """The scheduler, the workers and the dashboard of a LocalCluster started here listen on
    127.0.0.1 (the dashboard would otherwise answer HTTP from the machine's network address)."""
    from urllib.parse import urlparse

    assert urlparse(client.dashboard_link).hostname == "127.0.0.1"
    info = client.scheduler_info()
    assert urlparse(info["address"]).hostname == "127.0.0.1"
    assert info["workers"] and all(urlparse(w).hostname == "127.0.0.1" for w in info["workers"])


def test_worker_count_and_addresses_are_bounded():
    from napari_4dstem_ml.parallel.cluster import max_workers

    with pytest.raises(ValueError, match="--workers 100000: at most"):
        Compute(workers=100000)
    assert Compute(workers=max_workers()).workers == max_workers()
    for bad in ("tcp://host:0", "tcp://host:70000", "tcp://host:port", "udp://host:1"):
        with pytest.raises(SchedulerUnreachable, match="tcp://HOST:PORT"):
            Compute(scheduler=bad)


@pytest.mark.parametrize("greeting", [None, b"SSH-2.0-OpenSSH_9.6\r\n", b"\xff" * 16])
def test_scheduler_that_is_no_dask_scheduler_fails_within_the_deadline(greeting):
    """A server that accepts and never answers, or speaks another protocol (which Dask
    would size its buffers by: 'Unable to allocate 2.82 EiB'): a clear error naming the
    address within the connection deadline."""
    import threading

    from napari_4dstem_ml.parallel.cluster import CONNECT_TIMEOUT_S

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    held = []

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            held.append(c)
            if greeting:
                c.sendall(greeting)

    threading.Thread(target=serve, daemon=True).start()
    address = f"tcp://127.0.0.1:{srv.getsockname()[1]}"
    t0 = time.monotonic()
    try:
        with pytest.raises(SchedulerUnreachable, match=address) as info:
            with open_client(Compute(scheduler=address)):
                pass
    finally:
        srv.close()
    assert time.monotonic() - t0 < CONNECT_TIMEOUT_S + 3
    assert ("no Dask scheduler answered" if greeting is None else "not a Dask scheduler") \
        in str(info.value)


def test_tls_scheduler_without_tls_settings_is_a_clear_error():
    with pytest.raises(SchedulerUnreachable, match="tls://127.0.0.1:1.*TLS settings"):
        with open_client(Compute(scheduler="tls://127.0.0.1:1")):
            pass


def test_connection_failures_during_a_job_name_the_scheduler():
    from distributed.comm.core import CommClosedError

    from napari_4dstem_ml.parallel.cluster import ClusterError
    from napari_4dstem_ml.parallel.jobs import _cluster_errors

    class Client:
        scheduler = type("S", (), {"address": "tcp://head:8786"})()

    with pytest.raises(ClusterError, match="predict: the connection to the Dask scheduler "
                                           "tcp://head:8786 failed"):
        with _cluster_errors(Client(), "predict"):
            raise CommClosedError("in <TCP (closed)>: Stream is closed")
    with pytest.raises(KeyError):  # anything else passes through unchanged
        with _cluster_errors(Client(), "predict"):
            raise KeyError("x")
