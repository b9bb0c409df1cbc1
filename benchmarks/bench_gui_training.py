"""GUI training vs headless training of the same job, interleaved in one run (issue 10, item 7).

The job: the 4D CNN (``conv4d``, K = 5, the training widget's defaults for learning rate and
batch size, seed 0) on the MoS2 sample against its ptychographic label (registered onto the scan
grid once, before timing), upper half trains, lower half validates, ``--epochs`` epochs.

* headless: the training widget's worker generator (``widgets.training.train_job``: the core's
  ``train`` with the same configs) consumed in the main thread, as the CLI does; nothing is
  drawn.
* headless (thread): the same generator consumed in a worker thread, as the GUI runs it, but
  with no GUI: the GUI's own overhead is GUI / headless (thread). On a loaded 2-core machine
  the main-thread run can take several times the CPU of the threaded one (OpenMP's workers
  spin-wait in the main thread's parallel regions: far fewer voluntary context switches), so
  both baselines are shown.
* GUI: the same job started from the training widget in the full window (browser, detectors,
  training and compare docks, MoS2 sample loaded, window shown under Xvfb with software
  OpenGL), timed from Start to the worker's ``finished`` signal, while the event loop runs —
  progress bar, loss curves, per-epoch reconstruction layer all updating as a user sees them.
  A 20 ms timer measures the longest event-loop stall during the run.

Runs alternate headless, headless (thread), GUI, … (``--repeats`` rounds) because the machine
is shared; the ratios of the medians are the figures (target: GUI ≤ 1.25 × headless).

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/bench_gui_training.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

os.environ.setdefault("NAPARI_4DSTEM_ML_SETTINGS", "off")


def load_avg() -> str:
    try:
        return f"load {os.getloadavg()[0]:.1f}"
    except OSError:
        return "load ?"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3, help="headless/GUI pairs")
    p.add_argument("--model", default="conv4d", choices=("conv4d", "linear"))
    args = p.parse_args(argv)
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        print("needs an X display: run under xvfb-run (see the docstring)")
        return 2

    from qtpy.QtCore import QEventLoop, QTimer
    from qtpy.QtWidgets import QApplication

    from napari_4dstem_ml.training.clusters import RegionSplit
    from napari_4dstem_ml.widgets.launcher import open_gui
    from napari_4dstem_ml.widgets.session import MEAN_LAYER, session_for
    from napari_4dstem_ml.widgets.training import TrainingWidget, register, train_job

    def wait(cond, timeout_s=300.0):
        t0 = time.time()
        while not cond():
            QApplication.processEvents()
            time.sleep(0.01)
            if time.time() - t0 > timeout_s:
                raise TimeoutError("condition not met")

    viewer = open_gui()
    win = viewer.window._qt_window
    win.show()
    win.resize(1560, 960)
    s = session_for(viewer)
    wait(lambda: s.current is not None and MEAN_LAYER in s.diffraction.layers)
    tr = next(w for w in viewer.window.dock_widgets.values() if isinstance(w, TrainingWidget))
    tr.kind_box.setCurrentText(args.model)
    tr.cluster.setValue(5)
    tr.epochs.setValue(args.epochs)
    ds = s.datasets[tr.dataset_box.currentText()]
    label, pixel, key = tr.chosen_label(ds)
    print(f"label {tr.label_box.currentText()!r}: registering once …", flush=True)
    reg = register(ds, label, pixel)
    s.registrations[(key, tr.dataset_box.currentText())] = reg
    lr, batch = tr.lr.value(), tr.batch.value()
    print(f"job: {args.model}, K=5, {args.epochs} epochs, lr {lr:g}, batch {batch}, "
          f"start {tr.init_choice()}, ensemble {tr.ensemble.value()}, data {ds.shape}", flush=True)

    def headless() -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        # the same job as the widget's Start: its start (base model by default) and ensemble
        for _ in train_job(ds, label, args.model, 5, args.epochs, lr, batch, threading.Event(),
                           pixel, registered=reg, split=RegionSplit(),
                           init=tr.init_choice(), ensemble=tr.ensemble.value()):
            pass
        return time.perf_counter() - t0, time.process_time() - c0

    def headless_thread() -> tuple[float, float]:
        out = {}

        def work():
            out["t"] = headless()

        t = threading.Thread(target=work)
        t.start()
        t.join()
        return out["t"]

    def gui() -> tuple[float, float, float]:
        stall = {"last": time.perf_counter(), "max": 0.0}

        def tick():
            now = time.perf_counter()
            stall["max"] = max(stall["max"], now - stall["last"])
            stall["last"] = now

        timer = QTimer()
        timer.setInterval(20)
        timer.timeout.connect(tick)
        t0, c0 = time.perf_counter(), time.process_time()
        worker = tr.start()
        loop = QEventLoop()
        worker.finished.connect(loop.quit)
        stall["last"] = time.perf_counter()
        timer.start()
        loop.exec()
        timer.stop()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert tr.result is not None, tr.readout.text()
        return wall, cpu, stall["max"] - 0.020

    times = {"headless": [], "thread": [], "gui": []}
    for i in range(args.repeats):
        h, hc = headless()
        times["headless"].append(h)
        print(f"round {i + 1}: headless          {h:6.1f} s (CPU {hc:5.1f} s, {load_avg()})",
              flush=True)
        t, tc = headless_thread()
        times["thread"].append(t)
        print(f"round {i + 1}: headless (thread) {t:6.1f} s (CPU {tc:5.1f} s, {load_avg()})",
              flush=True)
        g, gc, st = gui()
        times["gui"].append(g)
        print(f"round {i + 1}: GUI               {g:6.1f} s (CPU {gc:5.1f} s, longest event-loop "
              f"stall {1000 * st:.0f} ms, {load_avg()}); GUI / headless {g / h:.2f}, "
              f"GUI / headless (thread) {g / t:.2f}", flush=True)
    mh, mt, mg = (statistics.median(times[k]) for k in ("headless", "thread", "gui"))
    print(f"median: headless {mh:.1f} s, headless (thread) {mt:.1f} s, GUI {mg:.1f} s", flush=True)
    print(f"GUI / headless = {mg / mh:.2f}, GUI / headless (thread) = {mg / mt:.2f} "
          f"(target <= 1.25)", flush=True)
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
