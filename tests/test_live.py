"""Live mode: replay an acquisition into a growing EMPAD file and follow it row by row."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import tifffile
import torch

from napari_4dstem_ml.cli import main
from napari_4dstem_ml.dataset import Calibration, Dataset4D
from napari_4dstem_ml.detectors import annular_mask, virtual_images
from napari_4dstem_ml.io import load
from napari_4dstem_ml.live import AcquisitionStalled, EmpadFollower, LivePipeline, replay, run_live
from napari_4dstem_ml.models import CNN4dConfig, build_model
from napari_4dstem_ml.predict import predict
from napari_4dstem_ml.preprocess import PreprocessConfig, Preprocessor
from napari_4dstem_ml.training.checkpoint import save_checkpoint


def scan(ny=9, nx=12, seed=2) -> Dataset4D:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:128, :128]
    data = np.empty((ny, nx, 128, 128), np.float32)
    for y in range(ny):
        for x in range(nx):
            disk = (np.hypot(yy - 63.2 - 0.1 * y, xx - 64.5) < 20) * (15 + 4 * np.cos(0.9 * x - 0.5 * y))
            data[y, x] = rng.poisson(disk + 0.2) - 0.1  # EMPAD: small negatives after background
    return Dataset4D(data, Calibration(scan_step=(0.3, 0.3), energy_ev=80e3))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    ds = scan()
    # data-set values fixed in the configuration (centre; no dose normalisation), so the live
    # fit on the first rows and the offline fit on the whole scan give the same transform
    cfg = PreprocessConfig(compression="power", bin_factor=4, centre=(63.5, 64.5), normalise=False)
    pre = Preprocessor.fit(ds, cfg).with_label_stats(0.5, 3.0)
    torch.manual_seed(1)
    model = build_model(CNN4dConfig(channels=(4, 4)), pre.output_shape).eval()
    path = tmp_path_factory.mktemp("model") / "cnn.pt"
    save_checkpoint(path, model, model.config, pre)
    return path, model, pre


def start_replay(ds, dst, rate, **kw) -> threading.Thread:
    t = threading.Thread(target=replay, args=(ds, dst, rate), kwargs=kw, daemon=True)
    t.start()
    return t


@pytest.mark.slow
def test_replay_then_live_equals_offline(tmp_path, model_file):
    path, model, pre = model_file
    ds = scan()
    acq = tmp_path / "acq.raw"
    writer = start_replay(ds, acq, 400.0)  # 108 frames in ~0.27 s: the follower sees it grow
    out = tmp_path / "live.tif"
    rc = main(["live", str(acq), "--model", str(path), "--inner", "5", "--outer", "30",
               "--pixels", "--centre", "63.5,64.5", "-o", str(out), "--timeout", "20"])
    writer.join()
    assert rc == 0
    offline = load(acq)  # the finished file, read as any EMPAD file
    np.testing.assert_array_equal(np.asarray(offline.data), ds.data)  # replay wrote the data
    ref = predict(model, pre, offline)
    np.testing.assert_allclose(tifffile.imread(out), ref, rtol=1e-5, atol=1e-6)
    adf = virtual_images(np.asarray(ds.data), annular_mask((128, 128), (63.5, 64.5), 5, 30))
    np.testing.assert_allclose(tifffile.imread(tmp_path / "live_adf.tif"), adf, rtol=1e-5)


def test_rows_arrive_while_the_file_grows(tmp_path):
    ds = scan(6, 5)
    acq = tmp_path / "acq.raw"
    writer = start_replay(ds, acq, 100.0)  # 30 frames over 0.3 s
    pipe = LivePipeline((6, 5), (128, 128), detectors={"bf": annular_mask((128, 128), (63, 64), 0, 20)})
    blocks = []
    result = run_live(EmpadFollower(acq, timeout_s=10), pipe, lambda ev: blocks.append(ev.rows_acquired))
    writer.join()
    assert result.complete and blocks[-1] == 6 and len(blocks) >= 3  # several blocks, in order
    np.testing.assert_allclose(result.images["navigation"], ds.data.sum(axis=(2, 3)), rtol=1e-5)


def test_stalled_acquisition_times_out_with_a_partial_image(tmp_path, model_file, capsys):
    path, _, _ = model_file
    ds = scan()
    acq = tmp_path / "acq.raw"
    replay(ds, acq, 0, stop_after=5 * 12 + 7)  # 5 whole rows and part of the sixth, then nothing
    out = tmp_path / "out.tif"
    t0 = time.monotonic()
    rc = main(["live", str(acq), "--model", str(path), "--inner", "5", "--outer", "30", "--pixels",
               "-o", str(out), "--timeout", "0.5"])
    assert rc == 3 and time.monotonic() - t0 < 30
    err = capsys.readouterr().err
    assert "stalled" in err and "5 of 9 scan rows" in err and "out.partial.tif" in err
    assert not out.exists() and not (tmp_path / "out_adf.tif").exists()
    adf = tifffile.imread(tmp_path / "out_adf.partial.tif")
    assert np.isfinite(adf[:5]).all() and np.isnan(adf[5:]).all()
    part = tifffile.imread(tmp_path / "out.partial.tif")  # model rows need the next K//2 rows
    assert np.isfinite(part[:3]).all() and np.isnan(part[3:]).all()


def test_follower_without_xml_times_out(tmp_path):
    with pytest.raises(AcquisitionStalled, match="no EMPAD XML"):
        EmpadFollower(tmp_path / "never.raw", timeout_s=0.2)


@pytest.mark.slow
def test_merlin_stream_through_libertem_live(tmp_path):
    """A Merlin TCP stream from LiberTEM-live's simulator, received with its receiver: the
    live ADF equals the virtual image of the counts written to the MIB file."""
    import shutil
    import socket
    import subprocess
    import sys

    pytest.importorskip("libertem_qd_mpx")
    sim = shutil.which("libertem-live-mib-sim") or str(
        __import__("pathlib").Path(sys.executable).parent / "libertem-live-mib-sim")
    if not __import__("os").path.exists(sim):
        pytest.skip("libertem-live's Merlin simulator is not installed")
    from napari_4dstem_ml.live.merlin import write_mib

    ds = scan(5, 6)
    counts = np.clip(np.rint(ds.data), 0, None)
    hdr = write_mib(Dataset4D(counts), tmp_path / "scan.mib")
    ports = []
    for _ in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    proc = subprocess.Popen([sim, str(hdr), "--host", "127.0.0.1", "--data-port", str(ports[0]),
                             "--control-port", str(ports[1]), "--trigger-port", str(ports[2]),
                             "--nav-shape", "5", "6"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        out = tmp_path / "adf.tif"
        rc = main(["live", f"merlin://127.0.0.1:{ports[0]}", "--inner", "5", "--outer", "30",
                   "--pixels", "--centre", "63.5,64.5", "--scan-shape", "5", "6", "-o", str(out),
                   "--timeout", "60"])
    finally:
        proc.kill()
        proc.wait()
    assert rc == 0
    ref = virtual_images(counts, annular_mask((128, 128), (63.5, 64.5), 5, 30))
    np.testing.assert_allclose(tifffile.imread(out), ref, rtol=1e-6)


def test_live_takes_the_calibrations_the_acquisition_lacks(tmp_path, capsys):
    """A model on a physical (α) grid needs α and mrad/px; the EMPAD XML of this acquisition
    states neither: live refuses with the option to give, and with the options given computes
    exactly what an offline prediction with the same calibration gives."""
    ds = scan(ny=6, nx=7)
    cal = Calibration(scan_step=(0.3, 0.3), energy_ev=80e3, detector_pixel=(1.0, 1.0),
                      detector_units="mrad", convergence_mrad=20.0)
    calibrated = Dataset4D(ds.data, cal)
    cfg = PreprocessConfig(angle_units="alpha", max_angle=1.6, output_shape=(16, 16),
                           output_pixel=0.2, centre=(63.5, 64.5), normalise=False)
    pre = Preprocessor.fit(calibrated, cfg).with_label_stats(0.0, 1.0)
    torch.manual_seed(3)
    model = build_model(CNN4dConfig(channels=(2, 2)), pre.output_shape).eval()
    path = save_checkpoint(tmp_path / "alpha.pt", model, model.config, pre)
    acq = tmp_path / "acq.raw"
    replay(ds, acq, 0.0)  # the whole acquisition, written at once (no calibration in its XML)
    out = tmp_path / "live.tif"
    args = ["live", str(acq), "--model", str(path), "-o", str(out), "--timeout", "5"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--convergence" in err or "--detector-pixel" in err
    assert not out.exists()
    assert main(args + ["--detector-pixel", "1.0", "--convergence", "20"]) == 0
    offline = Dataset4D(np.asarray(load(acq).data), cal.with_(scan_step=load(acq).calibration.scan_step))
    ref = predict(model, pre, offline)
    np.testing.assert_allclose(tifffile.imread(out), ref, rtol=1e-5, atol=1e-6)


# -- hostile sources (issue 21) ----------------------------------------------------------------
def _frames(ds) -> bytes:
    ny, nx = ds.scan_shape
    f = np.zeros((ny, nx, 130, 128), "<f4")
    f[:, :, :128] = ds.data
    return f.tobytes()


@pytest.mark.parametrize("how", ["shrinks", "rewritten_in_place", "replaced"])
def test_a_new_acquisition_into_the_same_file_ends_the_run(tmp_path, how):
    """The file is followed while it only grows; a second acquisition written into the same
    name (truncated and rewritten, rewritten in place, or a new file) is detected at the next
    block, never spliced onto the rows of the first."""
    from napari_4dstem_ml.live import AcquisitionRestarted

    first, second = scan(4, 3, seed=1), scan(4, 3, seed=2)
    second = Dataset4D(second.data * 10, second.calibration)
    acq = tmp_path / "acq.raw"
    replay(first, acq, 0, stop_after=2 * 3)  # two rows of the first acquisition
    rows = EmpadFollower(acq, timeout_s=2).rows()
    y0, y1, block = next(rows)
    assert (y0, y1) == (0, 2)
    np.testing.assert_array_equal(block, first.data[:2])
    data = _frames(second)
    row = 3 * (len(data) // 12)
    if how == "shrinks":
        acq.write_bytes(data[:row])  # one row of the new acquisition so far
    elif how == "rewritten_in_place":  # same size and more, other frames
        with open(acq, "r+b") as f:
            f.write(data[: 3 * row])
    else:
        (tmp_path / "new.raw").write_bytes(data[: 3 * row])
        (tmp_path / "new.raw").replace(acq)
    with pytest.raises(AcquisitionRestarted, match="acq.raw.*after 2 of 4 scan rows") as info:
        for _ in rows:
            pass
    assert info.value.rows_done == 2


def test_cli_keeps_the_first_acquisition_as_a_partial_image(tmp_path, capsys, monkeypatch):
    """stemml live: the file regrows with another acquisition after the first block: exit 3,
    the partial image holds the first acquisition's rows only, no final output."""
    from napari_4dstem_ml.live import source

    first, second = scan(4, 3, seed=1), scan(4, 3, seed=2)
    acq = tmp_path / "acq.raw"
    replay(first, acq, 0, stop_after=2 * 3)
    real = source.EmpadFollower.rows

    def rows(self):
        for i, item in enumerate(real(self)):
            yield item
            if i == 0:  # meanwhile a new acquisition starts in the same file
                acq.write_bytes(_frames(Dataset4D(second.data * 10)))

    monkeypatch.setattr(source.EmpadFollower, "rows", rows)
    out = tmp_path / "out.tif"
    rc = main(["live", str(acq), "--inner", "5", "--outer", "30", "--pixels", "--centre",
               "63.5,64.5", "-o", str(out), "--timeout", "2"])
    err = capsys.readouterr().err
    assert rc == 3 and "acq.raw" in err and "out.partial.tif" in err
    assert not out.exists()
    part = tifffile.imread(tmp_path / "out.partial.tif")
    ref = virtual_images(first.data[:2], annular_mask((128, 128), (63.5, 64.5), 5, 30))
    np.testing.assert_allclose(part[:2], ref, rtol=1e-6)
    assert np.isnan(part[2:]).all()


def test_replay_never_sleeps_a_negative_time(tmp_path, monkeypatch):
    """The clock moves between computing what is due and sleeping (a busy machine): the
    sleep is never negative ("sleep length must be non-negative")."""
    import importlib
    from types import SimpleNamespace

    replay_module = importlib.import_module("napari_4dstem_ml.live.replay")
    ticks = iter([0.0, 0.0, 0.0, 10.0])  # start, frame 0 due, nothing due, then much later
    sleeps = []
    clock = SimpleNamespace(perf_counter=lambda: next(ticks, 1e6), sleep=sleeps.append)
    monkeypatch.setattr(replay_module, "time", clock)
    ds = scan(2, 3)
    replay_module.replay(ds, tmp_path / "acq.raw", 100.0)
    assert sleeps and min(sleeps) >= 0
    np.testing.assert_array_equal(np.asarray(load(tmp_path / "acq.raw").data), ds.data)


def test_merlin_receiver_leaves_no_shared_memory_folder(tmp_path, monkeypatch):
    """A server on the port that is not Merlin: a clear error naming the address, within the
    timeout, and the receiver's folder is gone."""
    import socket
    import tempfile

    pytest.importorskip("libertem_qd_mpx")
    from napari_4dstem_ml.live.merlin import MerlinError, MerlinSource

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            c.sendall(b"HTTP/1.1 404 Not Found\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    t0 = time.monotonic()
    try:
        with pytest.raises(MerlinError, match=f"merlin://127.0.0.1:{port}.*Merlin's data protocol"):
            MerlinSource("127.0.0.1", port, scan_shape=(2, 2), timeout_s=3)
    finally:
        srv.close()
    assert time.monotonic() - t0 < 5
    assert list(tmp_path.iterdir()) == []
