"""``python -m napari_4dstem_ml.simulate mos2|prsco3 -o FILE [--tiny]`` (needs the ``[sim]`` extra)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m napari_4dstem_ml.simulate",
                                description="Simulate a 4D-STEM sample with abTEM multislice.")
    p.add_argument("sample", choices=["mos2", "prsco3"])
    p.add_argument("-o", "--output", required=True, type=Path, help="HDF5 file to write")
    p.add_argument("--tiny", action="store_true", help="a seconds-long toy configuration (tests)")
    p.add_argument("--frozen-phonons", type=int, default=None, help="PrScO3: configurations")
    args = p.parse_args(argv)
    try:
        import abtem  # noqa: F401
    except ImportError:
        print("abTEM is not installed: pip install 'napari-4dstem-ml[sim]'", file=sys.stderr)
        return 2
    if args.sample == "mos2":
        from .mos2 import MoS2Config, simulate_mos2

        simulate_mos2(MoS2Config.tiny() if args.tiny else MoS2Config(), args.output)
    else:
        from dataclasses import replace

        from .prsco3 import PrScO3Config, simulate_prsco3

        cfg = PrScO3Config.tiny() if args.tiny else PrScO3Config()
        if args.frozen_phonons:
            cfg = replace(cfg, frozen_phonons=args.frozen_phonons)
        simulate_prsco3(cfg, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
