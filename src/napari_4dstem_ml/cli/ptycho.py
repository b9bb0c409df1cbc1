"""``stemml ptycho``: a ptychographic reconstruction of the data, written as a training label
(extra ``[ptycho]``), with its quality checks. Ctrl-C stops after the current iteration's
state is saved; the same command then resumes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .args import COUNT, POSITIVE, add_data_options, number
from .errors import UserError
from .inputs import input_files, load_data
from .reporting import progress

INSTALL = "pip install 'napari-4dstem-ml[ptycho]'"


def _config(args: argparse.Namespace):
    from ..ptycho import PtychoConfig

    multi = args.mode == "multislice"
    if multi and (args.slices is None or args.slice_thickness is None):
        raise UserError("--mode multislice needs --slices N and --slice-thickness ANGSTROM")
    if not multi and (args.slices not in (None, 1) or args.slice_thickness is not None):
        raise UserError("--slices/--slice-thickness need --mode multislice")
    try:
        rotation = None if args.rotation == "fit" else float(args.rotation)
    except ValueError:
        raise UserError(f"--rotation: expected degrees or 'fit', got {args.rotation!r}") from None
    try:
        return PtychoConfig(
            mode=args.mode, slices=args.slices if multi else 1,
            slice_thickness_A=args.slice_thickness if multi else None,
            iterations=args.iterations, bin_factor=args.bin,
            padded_size=args.pad or None, batch_size=args.batch, defocus_A=args.defocus,
            rotation_deg=rotation, half_data_frc=not args.no_frc,
            sample_thickness_A=args.thickness, seed=args.seed, device=args.device)
    except ValueError as exc:
        raise UserError(f"ptycho settings: {exc}") from exc


def _ground_truth(args: argparse.Namespace, scan_shape):
    if not args.ground_truth:
        return None
    from ..registration import load_label

    name = args.ground_truth_dataset
    if name is None and Path(args.ground_truth).suffix.lower() in (".h5", ".hdf5", ".emd"):
        import h5py

        try:
            with h5py.File(args.ground_truth, "r") as f:
                if "ground_truth/potential" in f:
                    name = "ground_truth/potential"
        except OSError:
            pass
    img = load_label(args.ground_truth, dataset=name).image
    if img.shape != tuple(scan_shape):
        raise UserError(f"{args.ground_truth}: the ground truth is {img.shape[0]} x {img.shape[1]}"
                        f" but the scan is {scan_shape[0]} x {scan_shape[1]}; it must be on the "
                        "scan grid")
    return img


def cmd_ptycho(args: argparse.Namespace) -> int:
    from ..ptycho import BackendUnavailableError, PtychoEvent, PtychoLabel, reconstruct_label
    from ..ptycho.job import default_state_path
    from ..ptycho.label_file import check_label_output

    config = _config(args)
    check_label_output(args.output, overwrite=args.overwrite, inputs=input_files(args))
    ds = load_data(args.data, args)
    inputs = input_files(args, ds)
    check_label_output(args.output, overwrite=args.overwrite, inputs=inputs)
    truth = _ground_truth(args, ds.scan_shape)
    state = Path(args.state) if args.state else default_state_path(args.output)
    bar = None
    result = None
    events = reconstruct_label(ds, config, args.output, overwrite=args.overwrite,
                               state_path=state, resume=not args.restart, ground_truth=truth)
    try:
        for ev in events:
            if isinstance(ev, PtychoLabel):
                result = ev
                continue
            assert isinstance(ev, PtychoEvent)
            if ev.stage in ("full", "half A", "half B") and ev.iteration > 0:
                if bar is None:
                    bar = progress(round(2 * ev.work), "ptychography", unit="half-iterations")
                bar.n = round(2 * ev.done)
                eta = "" if ev.eta_s is None else f", {ev.eta_s / 60:.1f} min left"
                bar.set_postfix_str(f"{ev.stage} {ev.iteration}/{ev.total}, loss {ev.loss:.4g}{eta}")
                if bar.disable:
                    print(f"{ev.stage}: iteration {ev.iteration}/{ev.total}, loss {ev.loss:.4g}, "
                          f"{ev.elapsed_s:.0f} s{eta}", flush=True)
            elif ev.message:
                if bar is not None:
                    bar.close()
                    bar = None
                print(ev.message, file=sys.stderr if ev.message.startswith("warning") else
                      sys.stdout, flush=True)
    except BackendUnavailableError as exc:
        raise UserError(f"stemml ptycho needs a ptychography back end: {INSTALL} ({exc})") from exc
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
            bar = None
        if state.exists():
            print(f"stemml ptycho: interrupted; the state is kept in {state}: run the same "
                  "command again to resume", file=sys.stderr)
        raise
    finally:
        if bar is not None:
            bar.close()
        events.close()
    return 0 if result is not None else 1


def add_parsers(sub) -> None:
    """The commands of this module, on the ``stemml`` subparsers ``sub``."""
    p = sub.add_parser("ptycho", help="ptychographic reconstruction of the data as a training "
                       "label (extra [ptycho])")
    p.add_argument("data", help="4D data set")
    p.add_argument("-o", "--output", required=True,
                   help="label file: .h5/.hdf5 (phase with pixel size, origin, back end and "
                        "settings), or .tif/.npy/.png")
    add_data_options(p)
    g = p.add_argument_group("reconstruction")
    g.add_argument("--mode", choices=("single-slice", "multislice"), default="single-slice",
                   help="single-slice for thin samples (default), multislice for thicker ones")
    g.add_argument("--slices", type=number(int, 2), help="multislice: number of slices")
    g.add_argument("--slice-thickness", type=POSITIVE, metavar="ANGSTROM",
                   help="multislice: thickness of each slice (Å)")
    g.add_argument("--thickness", type=POSITIVE, metavar="ANGSTROM",
                   help="the sample's thickness if known (Å): checked against the mode")
    g.add_argument("--iterations", type=COUNT, default=8, help="iterations (default 8)")
    g.add_argument("--defocus", type=number(float), default=0.0, metavar="ANGSTROM",
                   help="probe defocus (Å, positive = underfocus; default 0)")
    g.add_argument("--bin", type=COUNT, default=2, help="sum BIN x BIN detector pixels (default 2)")
    g.add_argument("--pad", type=number(int, 0), default=128, metavar="N",
                   help="zero-pad the binned patterns to N x N, which sets the object pixel "
                        "(default 128; 0: no padding)")
    g.add_argument("--batch", type=COUNT, default=256, help="patterns per gradient step (default 256)")
    g.add_argument("--rotation", default="0", metavar="DEG|fit",
                   help="scan-to-detector rotation in degrees, or 'fit' from the centre of mass "
                        "(default 0)")
    g.add_argument("--no-frc", action="store_true",
                   help="skip the two half-data reconstructions (no FRC self-consistency; half "
                        "the time)")
    g.add_argument("--seed", type=number(int, 0), default=1)
    g.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    p.add_argument("--ground-truth", metavar="FILE",
                   help="an image on the scan grid to score the label against (simulations; an "
                        "HDF5 sample's /ground_truth/potential is found by itself)")
    p.add_argument("--ground-truth-dataset", metavar="PATH", help="the ground truth's dataset")
    p.add_argument("--state", metavar="FILE",
                   help="where the resumable state is kept (default OUTPUT.resume.pt)")
    p.add_argument("--restart", action="store_true", help="ignore a saved state and start again")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=cmd_ptycho)
