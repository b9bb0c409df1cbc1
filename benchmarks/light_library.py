"""Issue 17, targets 1-2 — does a base library with light covalent crystals help? The items of
the experiment and how it was run (see the README's Trust section for the result).

The shipped library's thick crystals are heavy (GaAs, Cu, Au, BaTiO3, LaAlO3) or ionic (MgO);
none is a light covalent crystal with close-spaced dumbbells. Five items beside the 20 of
``simulate.suites.library()``, none a held-out material: diamond [110] (dumbbells 0.89 A) at
80 and 200 keV, 3C-SiC [110] (1.09 A) at 100 and 300 keV, Ge [110] (1.42 A) at 80 keV; 4-15 nm,
two frozen-phonon configurations, energies and angles spread over the library's ranges.

    python benchmarks/light_library.py -o DIR      # simulate the five items into DIR (~11 min)
    python benchmarks/light_library.py --run --library LIB -o DIR --out OUT [--seed 1]
        # the base CNN retrained by the recipe on LIB's 20 items (the control) and on them plus
        # DIR's five, each fine-tuned on MoS2 as `stemml train` does and scored with the shipped
        # default on our development set (~35 min on 2 cores; --seed: another training seed,
        # written to OUT/<light|control>_seed<N>); then the suite, once per model:
    python benchmarks/transfer.py --checkpoints conv4d=OUT/<control|light>/tuned_conv4d.pt --out …
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def extra_items() -> list:
    """The five simulation configs."""
    from napari_4dstem_ml.simulate.suites import HELD_OUT_MATERIALS, _item

    items = [
        _item("c110_80kev_5nm", "C", 80, 22.0, (128, 0.8), 0.20, 5e4, 401,
              thickness_nm=5, zone=(1, 1, 0), phonons=2),
        _item("c110_200kev_15nm", "C", 200, 27.0, (96, 1.1), 0.15, 1e5, 402,
              thickness_nm=15, defocus_nm=-5.0, zone=(1, 1, 0), phonons=2),
        _item("sic110_100kev_8nm", "SiC", 100, 20.0, (128, 0.9), 0.25, 3e4, 403,
              thickness_nm=8, defocus_nm=5.0, tilt=(1.0, 0.0), zone=(1, 1, 0), phonons=2),
        _item("sic110_300kev_12nm", "SiC", 300, 24.0, (128, 0.7), 0.20, 5e4, 404,
              thickness_nm=12, zone=(1, 1, 0), phonons=2),
        _item("ge110_80kev_4nm", "Ge", 80, 28.0, (96, 1.2), 0.25, 5e4, 405,
              thickness_nm=4, zone=(1, 1, 0), phonons=2),
    ]
    if [c.name for c in items if c.structure.name in HELD_OUT_MATERIALS]:
        raise AssertionError("the experiment uses a held-out material")
    return items


def run(library: Path, extra: Path, out: Path, seed: int = 0) -> None:
    """Train, fine-tune and score the control and the extended library (see the docstring)."""
    from base_variants import fine_tune, score, train_variant

    tuned = {}
    for name, extra_files in (("light", sorted(extra.glob("*.h5"))), ("control", [])):
        lib = out / "library" / name
        lib.mkdir(parents=True, exist_ok=True)
        for f in [*sorted(library.glob("*.h5")), *extra_files]:
            link = lib / f.name
            if not link.exists():
                link.symlink_to(f.resolve())
        print(f"{name}: {len(list(lib.glob('*.h5')))} library items", flush=True)
        run_dir = out / (name if seed == 0 else f"{name}_seed{seed}")
        base = train_variant("recipe", seed, lib, run_dir)
        tuned[name] = fine_tune(base, run_dir / "tuned_conv4d.pt")
    shipped = out / "shipped_tuned.pt"
    if not shipped.exists():
        fine_tune(None, shipped)
    score({"shipped": shipped, **tuned})


def main(argv=None) -> int:
    sys.path.insert(0, str(Path(__file__).parent))
    from defect_library import main as simulate_items

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", type=Path, default=REPO / "benchmarks/_data/light_library")
    ap.add_argument("--run", action="store_true", help="train, fine-tune and score (see above)")
    ap.add_argument("--library", type=Path, default=REPO / "benchmarks/_data/library")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/_out/light_library")
    ap.add_argument("--seed", type=int, default=0, help="the recipe's training seed (default 0)")
    ap.add_argument("--estimate", action="store_true")
    args = ap.parse_args(argv)
    if not args.run:
        return simulate_items(["-o", str(args.output), *(["--estimate"] if args.estimate else [])],
                              extra_items=extra_items)
    run(args.library, args.output, args.out, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
