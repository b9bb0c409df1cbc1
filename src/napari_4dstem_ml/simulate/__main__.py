"""``python -m napari_4dstem_ml.simulate mos2|prsco3 -o FILE [--tiny]``, the held-out
``transfer-suite`` and the training ``library`` (``-o DIR``), or one ``config`` JSON file
(``--config CFG.json -o FILE``); ``--estimate`` prints the expected time and stops;
``throughput`` measures this machine's multislice rate against the built-in estimate.
Needs the ``[sim]`` extra."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
DEFAULT_DIRS = {"transfer-suite": REPO / "benchmarks" / "_data" / "transfer",
                "library": REPO / "benchmarks" / "_data" / "library"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m napari_4dstem_ml.simulate",
                                description="Simulate 4D-STEM data with abTEM multislice.")
    p.add_argument("sample", choices=["mos2", "prsco3", "transfer-suite", "library", "config",
                                      "throughput"])
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="HDF5 file (mos2, prsco3, config) or folder (transfer-suite, library; "
                        "default benchmarks/_data/<name> of the repository)")
    p.add_argument("--tiny", action="store_true", help="a seconds-long toy configuration (tests)")
    p.add_argument("--frozen-phonons", type=int, default=None, help="PrScO3: configurations")
    p.add_argument("--config", type=Path, default=None, help="config: a SimulationConfig JSON file")
    p.add_argument("--estimate", action="store_true", help="print the time estimate and stop")
    args = p.parse_args(argv)
    try:
        import abtem  # noqa: F401
    except ImportError:
        print("abTEM is not installed: pip install 'napari-4dstem-ml[sim]'", file=sys.stderr)
        return 2
    if args.sample == "throughput":
        from .engine import measure_throughput
        from .scene import SECONDS_PER_POINT_LOG2

        r = measure_throughput()
        print(f"{r:.3e} CPU s per position x slice x point x log2(points) on one core "
              f"(the built-in estimate uses {SECONDS_PER_POINT_LOG2:.3e}: ratio "
              f"{r / SECONDS_PER_POINT_LOG2:.2f})")
        return 0
    if args.sample in ("mos2", "prsco3", "config") and args.output is None:
        p.error(f"{args.sample} needs -o FILE")
    if args.sample == "mos2":
        from .mos2 import MoS2Config, simulate_mos2

        simulate_mos2(MoS2Config.tiny() if args.tiny else MoS2Config(), args.output)
    elif args.sample == "prsco3":
        from dataclasses import replace

        from .prsco3 import PrScO3Config, simulate_prsco3

        cfg = PrScO3Config.tiny() if args.tiny else PrScO3Config()
        if args.frozen_phonons:
            cfg = replace(cfg, frozen_phonons=args.frozen_phonons)
        simulate_prsco3(cfg, args.output)
    elif args.sample == "config":
        from .engine import run_simulation
        from .scene import SimulationConfig, estimate_seconds

        if args.config is None:
            p.error("config needs --config CFG.json")
        cfg = SimulationConfig.from_dict(json.loads(args.config.read_text()))
        print(f"estimate: {estimate_seconds(cfg):.0f} s on one core")
        if not args.estimate:
            run_simulation(cfg, args.output)
    else:
        from .scene import estimate_seconds
        from .suites import library, log_suite, transfer_suite, write_suite

        configs = transfer_suite() if args.sample == "transfer-suite" else library()
        out = args.output or DEFAULT_DIRS[args.sample]
        total = 0.0
        for c in sorted(configs, key=estimate_seconds):
            e = estimate_seconds(c)
            total += e
            print(f"{c.name:24s} estimate {e:6.0f} s")
        print(f"{args.sample}: {len(configs)} items, estimate {total / 60:.0f} min on one core -> {out}")
        if not args.estimate:
            log_suite(write_suite(configs, out), log=lambda s: print(s, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
