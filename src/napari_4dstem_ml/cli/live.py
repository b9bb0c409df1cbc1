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
    number,
)
from .errors import EXIT_STALLED, UserError, numeric_warnings_off
from .inputs import (
    calibration_with,
    input_files,
    load_data,
)
from .reporting import progress


def cmd_replay(args: argparse.Namespace) -> int:
    from ..live import replay
    from ..live.replay import check_rate

    check_rate(args.rate)
    ds = load_data(args.source, args)
    dst = Path(args.destination)
    ny, nx = ds.scan_shape
    with progress(ny * nx, f"replay at {args.rate:g} Hz" if args.rate else "replay",
                  unit="frames") as bar:
        replay(ds, dst, args.rate, overwrite=args.overwrite, inputs=input_files(args, ds),
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


def _save_partials(plan, result, outputs: dict[str, Path], names: list[str], pixel,
                   meta: dict) -> list[str]:
    """The rows done so far, each image under a fresh name (``NAME.partial.tif``, else
    ``NAME.partial-2.tif``, ...): a partial image may be the only record of an acquisition,
    so it never replaces anything, also with ``--overwrite``."""
    from ..export import IMAGE_SUFFIXES, OutputExistsError, write_images

    ny = result.rows_total
    done = [n for n in names if result.rows_done[n] > 0]
    for _attempt in range(5):  # another run may take a fresh name meanwhile: pick again
        partial = plan.copy()
        paths = {n: partial.fresh(_partial_name(outputs[n]), f"the partial {n} image",
                                  suffixes=IMAGE_SUFFIXES) for n in done}
        items = [(paths[n], result.images[n], pixel,
                  {**meta, "partial": f"{result.rows_done[n]} of {ny} scan rows"}) for n in done]
        try:
            write_images(items, overwrite=False, inputs=plan.inputs)
        except OutputExistsError:
            continue
        return [f"{paths[n]} ({result.rows_done[n]} of {ny} rows)" for n in done]
    raise UserError(f"{outputs[names[-1]]}: could not find a free name for the partial image")


def cmd_live(args: argparse.Namespace) -> int:
    from ..export import IMAGE_SUFFIXES, OutputPlan
    from ..live.merlin import parse_address

    if args.model is None and args.inner is None:
        raise UserError("nothing to compute: give --model and/or --inner/--outer")
    if (args.inner is None) != (args.outer is None):
        raise UserError("--inner and --outer go together")
    if args.inner is not None and args.outer <= args.inner:
        raise UserError(f"--outer ({args.outer}) must be larger than --inner ({args.inner})")
    names = (["adf"] if args.inner is not None else []) + (["model"] if args.model else [])
    outputs = _live_outputs(args, names)
    merlin = parse_address(args.data) is not None
    src_files = [args.model] if merlin else [args.data, str(Path(args.data).with_suffix(".xml")),
                                              args.model]
    plan = OutputPlan(inputs=src_files, overwrite=args.overwrite)
    for n, p in outputs.items():
        plan.add(p, "-o" if p == Path(args.output) else f"the {n} image beside -o",
                 suffixes=IMAGE_SUFFIXES)
    loaded = None
    if args.model:
        from ..training.checkpoint import load_checkpoint

        if not Path(args.model).exists():
            raise UserError(f"{args.model}: no such model file")
        loaded = load_checkpoint(args.model)
    source = _live_source(args)
    try:
        return _run(args, source, plan, outputs, names, loaded)
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()


def _run(args: argparse.Namespace, source, plan, outputs: dict[str, Path], names: list[str],
         loaded) -> int:
    """``stemml live`` once its source is open (see :func:`cmd_live`)."""
    from ..detectors.centre import find_bf_centre
    from ..detectors.geometry import annular_mask
    from ..export import write_images
    from ..live import LivePipeline, run_live

    plan.add_inputs(getattr(source, "xml", None))  # the XML the acquisition wrote
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
            def auto(mean):
                import numpy as np

                try:
                    if not np.isfinite(mean).all():
                        raise ValueError("it holds NaN/inf patterns")
                    centre = find_bf_centre(mean)
                except ValueError as exc:
                    reason = str(exc).replace("mean_pattern", "their mean pattern")
                    raise UserError(f"{args.data}: cannot find the bright-field disk centre in "
                                    f"the first scan row ({reason}); give it with --centre "
                                    "CY,CX (detector pixels)") from exc
                return annular_mask(det, centre, args.inner / per_px, args.outer / per_px)

            detectors["adf"] = auto
    try:
        pipe = LivePipeline(source.scan_shape, source.detector_shape, detectors=detectors,
                            model=loaded.model if loaded else None,
                            preprocessor=loaded.preprocessor if loaded else None,
                            calibration=calibration, info=loaded.info if loaded else None)
        pipe.warm_up()
    except ValueError as exc:  # e.g. a scan too small for the model's clusters
        raise UserError(f"{args.data} ({source.scan_shape[0]} x {source.scan_shape[1]} scan): "
                        f"{exc}" + (f" (model {args.model})" if args.model else "")) from exc
    ny, nx = source.scan_shape
    last = names[-1]
    with progress(ny, f"live {Path(args.data).name}") as bar, numeric_warnings_off():
        said = set()

        def show(ev):
            for text in pipe.messages:  # the domain check on the first rows, said once
                if text not in said:
                    said.add(text)
                    bar.write(f"stemml live: {text}", file=sys.stderr)
            bar.update(ev.rows_done[last] - bar.n)
            bar.set_postfix(acquired=ev.rows_acquired, rate=f"{ev.frames_per_s:.0f}/s",
                            latency=f"{ev.latency_s * 1e3:.0f}ms", refresh=False)

        result = run_live(source, pipe, show)
    step = calibration.scan_step_A  # --scan-step wins over the acquisition's
    pixel = step[1] if step else None
    meta = {"data": str(args.data), "model": args.model, "calibration": calibration.info()}
    if not result.complete:
        saved = _save_partials(plan, result, outputs, names, pixel, meta)
        where = "; partial image(s) saved as " + ", ".join(saved) if saved else "; nothing to save"
        print(f"stemml live: {result.message}{where}", file=sys.stderr)
        return EXIT_STALLED
    for n in names:
        _check_finite(result.images[n], args.data, n)
    write_images([(outputs[n], result.images[n], pixel, meta) for n in names],
                 overwrite=args.overwrite, inputs=plan.inputs)
    for n in names:
        print(f"wrote {outputs[n]} ({n}, {ny} x {nx})")
    print(f"{result.frames} frames in {result.elapsed_s:.1f} s ({result.frames / max(result.elapsed_s, 1e-9):.0f} "
          f"frames/s); slowest block processed in {result.max_latency_s * 1e3:.0f} ms")
    return 0


def _check_finite(image, data: str, name: str) -> None:
    """A finished live image with NaN/inf (NaN patterns in the stream) is reported naming the
    acquisition; an all-NaN or all-zero one is refused by the writer."""
    import numpy as np

    bad = int(image.size - np.isfinite(image).sum())
    if 0 < bad < image.size:
        print(f"stemml live: warning: {bad} of {image.size} scan positions of the {name} image "
              f"are NaN/inf (the acquisition {data} holds NaN/inf values there)", file=sys.stderr)


def add_parsers(sub) -> None:
    """The commands of this module, on the ``stemml`` subparsers ``sub``."""
    p = sub.add_parser("replay", help="write an EMPAD acquisition in progress (XML, then frames at a rate)")
    p.add_argument("source", help="4D data set to replay (128 x 128 detector)")
    p.add_argument("destination", help="EMPAD .raw file to write (its .xml beside it)")
    p.add_argument("--rate", type=number(float, 0, 1e6), default=1100.0,
                   help="frames per second, up to 1e6 (0: as fast as possible)")
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
    p.add_argument("--timeout", type=number(float, 0, 86400, lo_open=True), default=10.0,
                   help="seconds without a new frame before giving up (partial images are saved as NAME.partial.tif)")
    p.add_argument("-o", "--output", required=True,
                   help="output image (.tif, .npy, .png); with a model and a detector the virtual image goes to NAME_adf.tif")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--scan-shape", nargs=2, type=COUNT, metavar=("NY", "NX"),
                   help="Merlin: the scan shape when the acquisition header does not give it")
    add_calibration_options(p)
    p.set_defaults(func=cmd_live)
