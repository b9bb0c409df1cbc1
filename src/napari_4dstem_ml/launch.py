"""``make run``: napari with the plugin's three widgets docked and the MoS2 sample loaded.

``python -m napari_4dstem_ml.launch [--headless] [--out DIR] [--models linear,conv4d]``.
Without a display (no ``DISPLAY``/``WAYLAND_DISPLAY`` on Linux, or Qt fails to start), or with
``--headless``, it says so and runs the headless workflow instead
(:func:`napari_4dstem_ml.workflow.run_headless`: train on the MoS2 sample, reconstruct MoS2 and
PrScO3, write images and a summary into ``--out``). Without the sample files it falls back to a
synthetic data set (navigation image written to ``--out``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def has_display() -> bool:
    """True when a GUI can plausibly start. On Linux: a Wayland socket, or an X server that
    accepts a connection at ``DISPLAY`` (Qt aborts the process, rather than raising, when
    ``DISPLAY`` names a server that is not there)."""
    if not sys.platform.startswith("linux"):
        return True
    wayland = os.environ.get("WAYLAND_DISPLAY")
    if wayland:
        runtime = os.environ.get("XDG_RUNTIME_DIR", "")
        if os.path.exists(wayland if os.path.isabs(wayland) else os.path.join(runtime, wayland)):
            return True
    display = os.environ.get("DISPLAY")
    return bool(display) and x_display_reachable(display)


def x_display_reachable(display: str, timeout: float = 2.0) -> bool:
    """Whether an X server accepts a connection at ``display`` (``[host]:N[.screen]``): the
    local socket ``/tmp/.X11-unix/XN`` (or its abstract twin) for no host, else TCP 6000 + N."""
    import socket

    host, sep, rest = display.rpartition(":")
    num = rest.split(".")[0]
    if not sep or not num.isdigit():
        return False
    n = int(num)
    if host in ("", "unix"):
        path = f"/tmp/.X11-unix/X{n}"
        targets = [(socket.AF_UNIX, path), (socket.AF_UNIX, "\0" + path)]
    else:
        targets = [(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET,
                    (host.strip("[]"), 6000 + n))]
    for family, address in targets:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(address)
                return True
        except OSError:
            continue
    return False


def _print_event(event) -> None:
    text = getattr(event, "text", None)
    if text is not None:
        print(text, flush=True)
        return
    name = type(event).__name__
    if name == "EpochEvent":
        print(
            f"  epoch {event.number}: train {event.train_loss:.4g}, validation {event.val_loss:.4g}, "
            f"r {event.metrics.get('pearson_r', float('nan')):.3f} ({event.elapsed_s:.0f} s)",
            flush=True,
        )
    elif name == "DoneEvent":
        print(
            f"  training done: {event.result.how_it_ended()}, {event.result.elapsed_s:.1f} s",
            flush=True,
        )


def run_headless(
    out: str | Path = "stemml-output",
    models: tuple[str, ...] = ("linear", "conv4d"),
    time_limit_s: float | None = 300.0,
) -> Path:
    """The headless workflow; returns the output folder."""
    out = Path(out)
    try:
        from .samples import sample_path

        sample_path("mos2")
    except FileNotFoundError as err:
        print(f"{err}\nusing a synthetic data set instead", flush=True)
        return _headless_synthetic(out)
    from .workflow import run_headless as workflow_run

    gen = workflow_run(out, models=tuple(models), time_limit_s=time_limit_s)
    while True:
        try:
            _print_event(next(gen))
        except StopIteration as stop:
            return Path(stop.value)


def _headless_synthetic(out: Path) -> Path:
    """No sample files: a navigation image of the synthetic data set (TIFF + PNG)."""
    import numpy as np

    from .detectors import virtual_images
    from .export import write_image
    from .training.synthetic import make_synthetic

    syn = make_synthetic((48, 48), (32, 32))
    ds = syn.dataset
    nav = virtual_images(ds.data, np.ones(ds.detector_shape, np.float32))
    out.mkdir(parents=True, exist_ok=True)
    step = ds.calibration.scan_step_A[1]
    for suffix in (".tif", ".png"):
        path = write_image(out / f"synthetic_navigation{suffix}", nav, step, overwrite=True)
        print(f"wrote {path}", flush=True)
    return out


def _models(text: str) -> tuple[str, ...]:
    models = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in models if m not in ("linear", "conv4d")]
    if bad or not models:
        raise SystemExit(f"--models: expected a comma-separated list of linear, conv4d; got {text!r}")
    return models


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m napari_4dstem_ml.launch", description=__doc__)
    p.add_argument("--headless", action="store_true", help="run the headless workflow")
    p.add_argument("--out", default="stemml-output", help="output folder (headless)")
    p.add_argument("--models", default="linear,conv4d", help="comma-separated: linear, conv4d")
    p.add_argument("--time-limit", type=float, default=300.0, help="training time limit (s)")
    args = p.parse_args(argv)
    display = not args.headless and has_display()
    if display:
        try:
            from .widgets.launcher import open_gui, run_event_loop

            open_gui()
            run_event_loop()
            return 0
        except Exception as err:  # noqa: BLE001 - e.g. Qt cannot connect to the display
            print(f"could not start the GUI ({err})", flush=True)
    if not args.headless and not display:
        shown = os.environ.get("DISPLAY")
        why = f"no X server answers at DISPLAY={shown}" if shown else "no display"
        print(f"{why}: running the headless workflow", flush=True)
    else:
        print("running the headless workflow", flush=True)
    out = run_headless(args.out, _models(args.models), args.time_limit)
    print(f"results in {out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
