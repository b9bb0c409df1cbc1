"""Issue 17, item 5 — does a base library with more defects help? The experiment's items and
how it was run (not shipped: see the README's Trust section for the result).

Five items beside the 20 of ``simulate.suites.library()`` (none of the held-out materials):
defects at the entrance, the exit and through the column of 6-10 nm crystals (GaAs [110] with In
substitutions and an As column vacancy; MgO with a Mg column vacancy and a Ca substitution; Cu
with a column vacancy and an Au substitution; 32 × 32 scans, one frozen-phonon configuration)
and monolayers with several vacancies and a substitution (MoS2, MoSe2).

    python benchmarks/defect_library.py -o DIR            # simulate the five items into DIR
    # a folder with links to the 20 library files and the five; then, for it and for the
    # 20-item library alone (the control: the same recipe and code, retrained now):
    python -m napari_4dstem_ml.base_model --library LIB --out OUT --kind conv4d
    # fine-tune each on MoS2 as `stemml train` does (--init OUT/base_conv4d.pt) and score it:
    python benchmarks/transfer.py --checkpoints linear=… conv4d=TUNED.pt --out …
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace


def extra_items() -> list:
    """The five simulation configs (thick ones at 32 × 32 positions, one phonon configuration)."""
    from napari_4dstem_ml.simulate.structures import Defect as V
    from napari_4dstem_ml.simulate.suites import HELD_OUT_MATERIALS, _item

    items = [
        _item("mos2_80kev_a21_vacmulti", "MoS2", 80, 21.4, (128, 0.8), 0.24, 3e4, 301,
              defects=(V("vacancy", "S", (0.2, 0.3), layer="entrance"),
                       V("vacancy", "S", (0.45, 0.7), layer="exit"),
                       V("vacancy", "S", (0.65, 0.35), layer="column"),
                       V("vacancy", "Mo", (0.3, 0.8)))),
        _item("mose2_60kev_a25_multi", "MoSe2", 60, 25.0, (128, 0.9), 0.25, 5e4, 302,
              defects=(V("vacancy", "Se", (0.25, 0.6), layer="exit"),
                       V("vacancy", "Se", (0.55, 0.25), layer="column"),
                       V("substitution", "Mo", (0.7, 0.7), new_element="W"))),
        _item("gaas110_200kev_8nm_defects", "GaAs", 200, 22.0, (128, 0.8), 0.25, 5e4, 303,
              thickness_nm=8, zone=(1, 1, 0), phonons=2,
              defects=(V("substitution", "Ga", (0.25, 0.3), new_element="In", layer="entrance"),
                       V("substitution", "Ga", (0.35, 0.7), new_element="In", layer="exit"),
                       V("vacancy", "As", (0.6, 0.45), layer="column"))),
        _item("mgo001_300kev_10nm_defects", "MgO", 300, 20.0, (128, 0.6), 0.30, 5e4, 304,
              thickness_nm=10, phonons=2,
              defects=(V("vacancy", "Mg", (0.3, 0.4), layer="column"),
                       V("substitution", "Mg", (0.55, 0.65), new_element="Ca", layer="entrance"))),
        _item("cu001_300kev_6nm_defects", "Cu", 300, 24.0, (128, 0.7), 0.20, 5e4, 305,
              thickness_nm=6, phonons=2,
              defects=(V("vacancy", "Cu", (0.3, 0.3), layer="column"),
                       V("substitution", "Cu", (0.6, 0.6), new_element="Au", layer="exit"))),
    ]
    if [c.name for c in items if c.structure.name in HELD_OUT_MATERIALS]:
        raise AssertionError("the experiment uses a held-out material")
    return [replace(c, scan_shape=(32, 32), frozen_phonons=1) if c.frozen_phonons > 1 else c
            for c in items]


def main(argv=None, extra_items=extra_items,
         default_output: str = "benchmarks/_data/defect_library") -> int:
    """Simulate ``extra_items()`` into ``-o DIR`` (resumable), or print their estimates."""
    from napari_4dstem_ml.simulate.suites import estimate_seconds, log_suite, write_suite

    ap = argparse.ArgumentParser(description="Simulate a library experiment's extra items")
    ap.add_argument("-o", "--output", default=default_output)
    ap.add_argument("--estimate", action="store_true")
    args = ap.parse_args(argv)
    items = extra_items()
    for c in items:
        print(f"{c.name:30s} estimate {estimate_seconds(c):.0f} s")
    if not args.estimate:
        log_suite(write_suite(items, args.output), log=lambda s: print(s, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
