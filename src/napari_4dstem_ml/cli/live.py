"""``stemml replay`` (an EMPAD acquisition in progress, from a file) and ``stemml live``
(reconstruction row by row while the detector writes)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .args import (
    COUNT,
    NON_NEGATIVE,
    POSITIVE,
    add_calibration_options,
    add_data_options,
)
from .errors import EXIT_STALLED, UserError
from .inputs import (
    calibration_with,
    input_files,
    load_data,
)
from .reporting import progress


def cmd_replay(args: argparse.Namespace) -> int:
    from ..live import replay

    ds = load_data(args.source, args)
    dst = Path(args.destination)
    for p in (dst, dst.with_suffix(".xml")):
        if str(p.resolve()) in {str(Path(f).resolve()) for f in input_files(args, ds)}:
            raise UserError(f"{p}: the replay would overwrite its own source")
    ny, nx = ds.scan_shape
    with progress(ny * nx, f"replay at {args.rate:g} Hz" if args.rate else "replay",
                   unit="frames") as bar:
        replay(ds, dst, args.rate, overwrite=args.overwrite,
               progress=lambda n, total: bar.update(n - bar.n))
    print(f"wrote {dst} ({ny} x {nx} frames) and {dst.with_suffix('.xml').name}")
    return 0


def _live_outputs(args: argparse.Namespace, names: list[str]) -> dict[str, Path]:
    """Output path per image: the model's at ``-o``; the virtual image at ``-o`` without a
    model, else with ``_adf`` added to the name."""
    out = Path(args.output)
    paths = {}
    for n in names:
        if n == "model" or (n == "adf" and "model" not in names):
            paths[n] = out
        else:
            paths[n] = out.with_name(f"{out.stem}_{n}{out.suffix}")
    return paths


def _partial_name(p: Path) -> Path:
    return p.with_name(f"{p.stem}.partial{p.suffix}")


def _live_source(args: argparse.Namespace):
    """The growing EMPAD file, or the Merlin stream of ``merlin://HOST:PORT``."""
    from ..live import open_source

    try:
        return open_source(args.data, timeout_s=args.timeout,
                           scan_shape=tuple(args.scan_shape) if args.scan_shape else None)
    except ImportError as exc:
        raise UserError(str(exc)) from exc


def cmd_live(args: argparse.Namespace) -> int:
    from ..detectors.centre import find_bf_centre
    from ..detectors.geometry import annular_mask
    from ..export import IMAGE_SUFFIXES, prepare_output, write_image
    from ..live import LivePipeline, run_live

    if args.model is None and args.inner is None:
        raise UserError("nothing to compute: give --model and/or --inner/--outer")
    if (args.inner is None) != (args.outer is None):
        raise UserError("--inner and --outer go together")
    if args.inner is not None and args.outer <= args.inner:
        raise UserError(f"--outer ({args.outer}) must be larger than --inner ({args.inner})")
    names = (["adf"] if args.inner is not None else []) + (["model"] if args.model else [])
    outputs = _live_outputs(args, names)
    src_files = (args.data, str(Path(args.data).with_suffix(".xml")), args.model)
    if args.data.lower().startswith("merlin://"):
        src_files = (args.model,)
    for p in outputs.values():
        prepare_output(p, overwrite=args.overwrite, inputs=[f for f in src_files if f],
                       suffixes=IMAGE_SUFFIXES)
        prepare_output(_partial_name(p), overwrite=True, inputs=[f for f in src_files if f])
    loaded = None
    if args.model:
        from ..training.checkpoint import load_checkpoint

        if not Path(args.model).exists():
            raise UserError(f"{args.model}: no such model file")
        loaded = load_checkpoint(args.model)
    source = _live_source(args)
    calibration = calibration_with(source.calibration, args)
    detectors = {}
    if args.inner is not None:
        if args.pixels:
            per_px = 1.0
        else:
            px = calibration.detector_pixel_mrad
            if px is None:
                raise UserError(f"{args.data}: the acquisition gives no detector pixel size in "
                                "mrad; give it with --detector-pixel MRAD, or the radii in "
                                "pixels with --pixels")
            per_px = px[0]
        det = source.detector_shape
        if args.centre and args.centre != "auto":
            try:
                cy, cx = (float(v) for v in args.centre.split(","))
            except ValueError as exc:
                raise UserError(f"--centre: expected 'auto' or 'CY,CX', got {args.centre!r}") from exc
            detectors["adf"] = annular_mask(det, (cy, cx), args.inner / per_px, args.outer / per_px)
        else:
            detectors["adf"] = lambda mean: annular_mask(det, find_bf_centre(mean),
                                                         args.inner / per_px, args.outer / per_px)
    pipe = LivePipeline(source.scan_shape, source.detector_shape, detectors=detectors,
                        model=loaded.model if loaded else None,
                        preprocessor=loaded.preprocessor if loaded else None,
                        calibration=calibration)
    pipe.warm_up()
    ny, nx = source.scan_shape
    last = names[-1]
    with progress(ny, f"live {Path(args.data).name}") as bar:
        def show(ev):
            bar.update(ev.rows_done[last] - bar.n)
            bar.set_postfix(acquired=ev.rows_acquired, rate=f"{ev.frames_per_s:.0f}/s",
                            latency=f"{ev.latency_s * 1e3:.0f}ms", refresh=False)

        result = run_live(source, pipe, show)
    step = source.calibration.scan_step_A
    pixel = step[1] if step else None
    if not result.complete:
        saved = []
        for n in names:
            if result.rows_done[n] > 0:
                p = _partial_name(outputs[n])
                write_image(p, result.images[n], pixel, overwrite=True)
                saved.append(f"{p} ({result.rows_done[n]} of {ny} rows)")
        where = "; partial image(s) saved as " + ", ".join(saved) if saved else "; nothing to save"
        print(f"stemml live: {result.message}{where}", file=sys.stderr)
        return EXIT_STALLED
    for n in names:
        write_image(outputs[n], result.images[n], pixel, overwrite=args.overwrite)
        print(f"wrote {outputs[n]} ({n}, {ny} x {nx})")
    print(f"{result.frames} frames in {result.elapsed_s:.1f} s ({result.frames / max(result.elapsed_s, 1e-9):.0f} "
          f"frames/s); slowest block processed in {result.max_latency_s * 1e3:.0f} ms")


def add_parsers(sub) -> None:
    """The commands of this module, on the ``stemml`` subparsers ``sub``."""
    p = sub.add_parser("replay", help="write an EMPAD acquisition in progress (XML, then frames at a rate)")
    p.add_argument("source", help="4D data set to replay (128 x 128 detector)")
    p.add_argument("destination", help="EMPAD .raw file to write (its .xml beside it)")
    p.add_argument("--rate", type=NON_NEGATIVE, default=1100.0, help="frames per second (0: as fast as possible)")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    add_data_options(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("live", help="reconstruct a growing EMPAD acquisition row by row")
    p.add_argument("data", help="EMPAD .raw being written (its .xml is read first), or "
                                "merlin://HOST:PORT for a Merlin detector's TCP data stream")
    p.add_argument("--model", help="checkpoint written by 'stemml train'")
    p.add_argument("--inner", type=NON_NEGATIVE, help="virtual annular detector: inner radius (mrad, or px with --pixels)")
    p.add_argument("--outer", type=POSITIVE, help="outer radius (mrad, or px with --pixels)")
    p.add_argument("--pixels", action="store_true", help="radii in detector pixels instead of mrad")
    p.add_argument("--centre", default="auto", help="'auto' (bright-field disk of the first row) or 'CY,CX' px")
    p.add_argument("--timeout", type=POSITIVE, default=10.0,
                   help="seconds without a new frame before giving up (partial images are saved as NAME.partial.tif)")
    p.add_argument("-o", "--output", required=True,
                   help="output image (.tif, .npy, .png); with a model and a detector the virtual image goes to NAME_adf.tif")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--scan-shape", nargs=2, type=COUNT, metavar=("NY", "NX"),
                   help="Merlin: the scan shape when the acquisition header does not give it")
    add_calibration_options(p)
    p.set_defaults(func=cmd_live)
