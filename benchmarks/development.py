"""Our own development data (issue 17), shared by the benchmarks that choose methods: the
bundled MoS2 and PrScO3 samples and ``simulate.suites.development_set()`` (library materials at
conditions in neither the library nor the transfer suite), each with its ground truth. The
transfer suite is never among them."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / "benchmarks/_data/development"


def development_files(data: Path = DEFAULT_DATA) -> list[Path]:
    """MoS2, PrScO3, then the development items in ``data`` (simulated there first where
    missing: about 5 min of one core)."""
    from napari_4dstem_ml.samples import sample_path
    from napari_4dstem_ml.simulate.suites import development_set, log_suite, write_suite

    configs = development_set()
    missing = [c for c in configs if not (data / f"{c.name}.h5").exists()]
    if missing:
        print(f"simulating {len(missing)} development item(s) into {data} ...", flush=True)
        log_suite(write_suite(missing, data))
    return [sample_path("mos2"), sample_path("prsco3")] + [data / f"{c.name}.h5" for c in configs]
