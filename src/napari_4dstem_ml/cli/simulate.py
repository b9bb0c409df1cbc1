"""``stemml simulate-train`` (simulate the user's structure and train on it) and ``stemml demo``."""

from __future__ import annotations

import argparse
import sys

from .args import (
    POSITIVE,
)
from .errors import UserError
from .reporting import progress


def _range(values, name: str, positive: bool = True) -> tuple[float, float] | None:
    if values is None:
        return None
    v = [float(x) for x in values]
    lo, hi = (v[0], v[0]) if len(v) == 1 else (v[0], v[1])
    if lo > hi or (positive and lo <= 0):
        raise UserError(f"{name}: expected MIN [MAX] with {'0 < ' if positive else ''}MIN <= MAX, got {values}")
    return lo, hi


def cmd_simulate_train(args: argparse.Namespace) -> int:
    from ..simtrain import SimTrainJob, SimTrainPlan, simulate_train
    from ..simulate.series import SeriesEvent
    from ..training.loop import EpochEvent
    from ..workflow import JobResult, Message

    try:
        job = SimTrainJob(
            structure=args.structure, output=args.output, work_dir=args.work_dir,
            zone_axis=tuple(args.zone) if args.zone else None,
            thickness_nm=_range(args.thickness, "--thickness"),
            defocus_nm=_range(args.defocus, "--defocus", positive=False) or (0.0, 0.0),
            dose=_range(args.dose, "--dose"), tilt_mrad=args.tilt,
            energy_kev=tuple(args.energy), convergence_mrad=_range(args.convergence, "--convergence"),
            detector_pixel_mrad=args.detector_pixel, detector_size=args.detector_size,
            scan_step_A=_range(args.scan_step, "--scan-step"), scan_shape=tuple(args.scan_shape),
            items=args.items, model=args.model, init=args.init, epochs=args.epochs, seed=args.seed,
            overwrite=args.overwrite)
    except ImportError as exc:
        raise UserError(f"simulate-train needs the simulation extra: pip install 'napari-4dstem-ml[sim]' ({exc})") from exc
    bar = None
    result = None
    try:
        for ev in simulate_train(job):
            if isinstance(ev, SimTrainPlan):
                print(ev.summary())
                for name, done in zip(ev.names, ev.finished):
                    print(f"  {name}{' (done)' if done else ''}")
                if args.plan_only:
                    return 0
            elif isinstance(ev, SeriesEvent):
                if bar is None and sys.stderr.isatty():
                    bar = progress(ev.n_items, "simulating", unit="items")
                if bar is not None:
                    bar.n = ev.index
                    eta = "" if ev.eta_s is None else f"{ev.eta_s / 60:.1f} min left"
                    bar.set_postfix_str(f"{ev.event.stage} {eta}")
                elif ev.event.stage == "done":
                    print(f"simulated {ev.index + 1}/{ev.n_items} in {ev.elapsed_s:.0f} s", flush=True)
            elif isinstance(ev, Message):
                if bar is not None:
                    bar.close()
                    bar = None
                print(ev.text)
            elif isinstance(ev, EpochEvent):
                r = ev.metrics.get("pearson_r", float("nan"))
                print(f"epoch {ev.number}: validation loss {ev.val_loss:.4g}, r {r:.3f}, {ev.elapsed_s:.0f} s",
                      flush=True)
            elif isinstance(ev, JobResult):
                result = ev
    except ImportError as exc:
        raise UserError(f"simulate-train needs the simulation extra: pip install 'napari-4dstem-ml[sim]' ({exc})") from exc
    finally:
        if bar is not None:
            bar.close()
    if result is not None:
        print(result.report())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..launch import run_headless

    models = ("linear", "conv4d") if args.model == "both" else (args.model,)
    run_headless(args.output, models=models, time_limit_s=args.time_limit)
    return 0


def add_parsers(sub) -> None:
    """The commands of this module, on the ``stemml`` subparsers ``sub``."""
    p = sub.add_parser("simulate-train", help="simulate your structure (abTEM) and train a model on it")
    p.add_argument("structure", help="a material name (e.g. MoS2, SrTiO3) or a CIF / ASE-readable file")
    p.add_argument("-o", "--output", required=True, help="checkpoint file (.pt)")
    p.add_argument("--zone", nargs=3, type=int, metavar=("U", "V", "W"), help="zone axis [uvw] (default: [001])")
    p.add_argument("--thickness", nargs="+", type=float, metavar="NM", help="thickness MIN [MAX] in nm (bulk crystals)")
    p.add_argument("--defocus", nargs="+", type=float, metavar="NM", help="defocus MIN [MAX] in nm (default 0)")
    p.add_argument("--dose", nargs="+", type=float, default=[1e4, 1e5], metavar="E", help="dose MIN [MAX] in e⁻/pattern")
    p.add_argument("--tilt", type=float, default=0.0, metavar="MRAD", help="largest crystal tilt (mrad)")
    p.add_argument("--energy", nargs="+", type=float, default=[80.0], metavar="KEV", help="beam energies (keV)")
    p.add_argument("--convergence", nargs="+", type=float, default=[21.4], metavar="MRAD", help="α MIN [MAX] (mrad)")
    p.add_argument("--detector-pixel", type=float, default=0.84, metavar="MRAD", help="your detector's pixel (mrad)")
    p.add_argument("--detector-size", type=int, default=128, help="your detector's pixels per side")
    p.add_argument("--scan-step", nargs="+", type=float, default=[0.25], metavar="ANGSTROM", help="scan step MIN [MAX] (Å)")
    p.add_argument("--scan-shape", nargs=2, type=int, default=[48, 48], metavar=("NY", "NX"))
    p.add_argument("--items", type=int, default=6, help="number of simulations")
    p.add_argument("--model", choices=("linear", "conv4d"), default="conv4d")
    p.add_argument("--init", default="base", help="'base' (default), 'scratch' or a checkpoint to fine-tune")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", help="where simulations are kept (default: OUTPUT.simulations/); reruns resume")
    p.add_argument("--plan-only", action="store_true", help="print the simulations and the time estimate, then stop")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=cmd_simulate_train)

    p = sub.add_parser("demo", help="the whole workflow on the bundled MoS2 and PrScO3 samples")
    p.add_argument("-o", "--output", default="stemml-output", help="folder for a new run subfolder")
    p.add_argument("--model", choices=("linear", "conv4d", "both"), default="both")
    p.add_argument("--time-limit", type=POSITIVE, default=300.0, help="training time limit per model (s)")
    p.set_defaults(func=cmd_demo)
