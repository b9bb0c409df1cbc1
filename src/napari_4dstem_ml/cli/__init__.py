"""The ``stemml`` command line: headless access to everything the GUI does.

One module per group of verbs (``info``, ``images``: adf/evaluate, ``models``: train/predict,
``live``: replay/live, ``simulate``: simulate-train/demo); ``args``, ``inputs``, ``reporting``
and ``errors`` hold what they share.

Errors: every user-facing error (bad arguments, unreadable, broken or hostile files, existing
or unwritable outputs, data that would give garbage) prints one message naming the file or
option and what was expected, and exits with status 2; no traceback. Anything else is an
internal error: one line, status 1 (``STEMML_DEBUG=1`` shows the traceback). Arguments are
validated by range when parsed (0 is a value, not "unset"); outputs are validated before any
work and written through :func:`napari_4dstem_ml.export.output_file` (never over an input).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from . import images, info, live, models, ptycho, simulate
from .args import Parser, exit_code
from .errors import (
    EXIT_INTERNAL,
    EXIT_STALLED,
    EXIT_USAGE,
    UserError,
    describe_error,
    numeric_warnings_off,
)
from .inputs import check_device, input_files

#: the verb modules, in the order ``stemml --help`` lists them
VERBS = (info, images, models, live, simulate, ptycho)


def build_parser() -> Parser:
    from .. import __version__

    parser = Parser(prog="stemml", description="4D-STEM machine-learning reconstruction")
    parser.add_argument("--version", action="version", version=f"napari-4dstem-ml {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for verb in VERBS:
        verb.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (status 2, argparse's message), --help, --version
        return exit_code(exc)
    try:
        check_device(args)
        with numeric_warnings_off():  # NaN/inf data are reported once, in the command's words
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("stemml: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("STEMML_DEBUG"):
            raise
        code, message = describe_error(exc, args, input_files(args))
        print(f"stemml {args.command}: error: {message}", file=sys.stderr)
        return code


__all__ = ["EXIT_INTERNAL", "EXIT_STALLED", "EXIT_USAGE", "UserError", "build_parser", "main"]
