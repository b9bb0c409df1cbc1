"""Which uncertainty map ranks the CNN's error? Measured on our own development items, never on
the transfer suite (issue 17: ρ ≥ 0.5 on every suite file is missed with the ensemble's spread).

Data: the bundled MoS2 and PrScO3 samples (both carry their ground truth) and
``simulate.suites.development_set()`` (library materials at conditions in neither the library
nor the suite), simulated into ``--data`` unless there (about 5 min of one core). Models: the
default CNN (``--tuned``: the base fine-tuned on MoS2 as ``stemml train`` does) and the shipped
base CNN. Each candidate map is scored as ``benchmarks/transfer.py`` scores the shipped one:
Spearman ρ of its local RMS with the local RMS error of the CNN's image against the ground
truth at the label's resolution (``metrics.uncertainty_error_correlation``).

Candidates:

- ``spread 2`` / ``spread 3``: the fine-tuned ensemble's standard deviation over 2 members
  (mean over the three pairs) and over all 3 — how much the count of members matters;
- ``base 3``: the base ensemble's spread on the same data;
- ``tuned+base 6``: the spread over the 3 fine-tuned and the 3 base members (the base's images
  mapped onto the fine-tuned mean by a scale/offset fit: the base was trained on a blurrier
  label);
- ``error model``: the checkpoint's error model (fitted on the MoS2 label's validation rows);
- ``|CNN-ADF|``: the CNN's local disagreement with the ADF image (scale/offset fitted);
- ``var+bias (label)`` / ``(truth)``: √(a·spread² + b·|CNN−ADF|² + c), a, b, c ≥ 0 fitted
  on MoS2's lower half against its ptychographic label (what training could do) or against
  its ground truth (what it cannot: shows what the fit's reference does).

    python benchmarks/uncertainty_maps.py [--tuned benchmarks/_out/transfer/default_conv4d.pt]
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def members(loaded, dataset) -> np.ndarray:
    """Each member's image ``(M, Ny, Nx)`` (label units)."""
    from napari_4dstem_ml.models.ensemble import Ensemble
    from napari_4dstem_ml.predict.events import finish
    from napari_4dstem_ml.predict.pipeline import iter_reconstruct

    return np.stack([finish(iter_reconstruct(Ensemble([m]), loaded.preprocessor, dataset)).image
                     for m in loaded.model.members]).astype(np.float64)


def var_bias(spread: np.ndarray, bias: np.ndarray, coef: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    sm = lambda a: ndimage.gaussian_filter(a, 1.0, mode="nearest")  # noqa: E731
    return np.sqrt(coef[0] * sm(spread**2) + coef[1] * sm(bias**2) + coef[2])


def fit_var_bias(spread, bias, image, reference, rows) -> np.ndarray:
    """NNLS of the local squared error of ``image`` vs ``reference`` on ``rows``."""
    from scipy import ndimage
    from scipy.optimize import nnls

    from napari_4dstem_ml.metrics import fit_scale_offset

    sl = (slice(*rows), slice(3, -3))
    _, _, fitted = fit_scale_offset(image[sl], reference[sl])
    e2 = ndimage.gaussian_filter((fitted - reference[sl]) ** 2, 1.0, mode="nearest")
    sm = lambda a: ndimage.gaussian_filter(a**2, 1.0, mode="nearest")[sl].ravel()  # noqa: E731
    x = np.stack([sm(spread), sm(bias), np.ones(e2.size)], 1)
    return nnls(x, e2.ravel())[0]


def main(argv=None) -> int:
    from development import DEFAULT_DATA, development_files, truth_at_label_resolution

    from napari_4dstem_ml.base_model import load_base_model
    from napari_4dstem_ml.baselines import classical_baselines
    from napari_4dstem_ml.error_model import ErrorModel
    from napari_4dstem_ml.io import load
    from napari_4dstem_ml.metrics import fit_scale_offset, pearson_r
    from napari_4dstem_ml.metrics import uncertainty_error_correlation as rho
    from napari_4dstem_ml.predict.events import finish
    from napari_4dstem_ml.samples import load_sample, sample_path
    from napari_4dstem_ml.training.checkpoint import load_checkpoint
    from napari_4dstem_ml.workflow import registered_label

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tuned", default=str(REPO / "benchmarks/_out/transfer/default_conv4d.pt"))
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = ap.parse_args(argv)
    files = development_files(args.data)
    tuned, base = load_checkpoint(args.tuned), load_base_model("conv4d")
    em = ErrorModel.from_dict(tuned.info.get("train_summary", {}).get("error_model"))

    per_file = []
    for f in files:
        ds = load(f, dataset="datacube/data")
        truth = truth_at_label_resolution(f, ds)
        m, b = members(tuned, ds), members(base, ds)
        img = m.mean(0)
        s, o, _ = fit_scale_offset(b.mean(0), img)
        cl = classical_baselines(ds)
        adf = cl.adf if cl.adf is not None else cl.icom
        per_file.append(dict(name=Path(f).stem, ds=ds, truth=truth, m=m, b=s * b + o, img=img,
                             bias=np.abs(img - fit_scale_offset(adf, img)[2]), adf=cl.adf,
                             icom=cl.icom))
    # the var+bias model's fits on MoS2's lower half (the first file)
    mos2 = per_file[0]
    lab = finish(registered_label(load_sample("mos2").dataset, sample_path("mos2"),
                                  dataset_name="label/image"))[0]
    rows = (32, mos2["img"].shape[0] - 3)
    coef_label = fit_var_bias(mos2["m"].std(0), mos2["bias"], mos2["img"], lab, rows)
    coef_truth = fit_var_bias(mos2["m"].std(0), mos2["bias"], mos2["img"], mos2["truth"], rows)
    print(f"var+bias fitted on MoS2's lower half: b/a = {coef_label[1] / coef_label[0]:.3g} "
          f"against the label, {coef_truth[1] / coef_truth[0]:.3g} against the truth")

    cands = ("spread 2", "spread 3", "base 3", "tuned+base 6", "error model", "|CNN-ADF|",
             "var+bias (label)", "var+bias (truth)")
    table = {c: [] for c in cands}
    print("\n| file | r_label ADF / iCoM / CNN | " + " | ".join(cands) + " |")
    print("|---" * (len(cands) + 2) + "|")
    for d in per_file:
        img, t, m = d["img"], d["truth"], d["m"]
        sp = m.std(0)
        v = {
            "spread 2": float(np.mean([rho(img, m[list(p)].std(0), t)
                                       for p in itertools.combinations(range(len(m)), 2)])),
            "spread 3": rho(img, sp, t),
            "base 3": rho(img, d["b"].std(0), t),
            "tuned+base 6": rho(img, np.concatenate([m, d["b"]]).std(0), t),
            "error model": float("nan") if em is None else rho(img, em.predict(img, sp), t),
            "|CNN-ADF|": rho(img, d["bias"], t),
            "var+bias (label)": rho(img, var_bias(sp, d["bias"], coef_label), t),
            "var+bias (truth)": rho(img, var_bias(sp, d["bias"], coef_truth), t),
        }
        for c in cands:
            table[c].append(v[c])
        c4 = (slice(4, -4), slice(4, -4))
        rs = [pearson_r(a[c4], t[c4]) if a is not None else float("nan")
              for a in (d["adf"], d["icom"], img)]
        print(f"| {d['name']} | " + " / ".join(f"{r:.3f}" for r in rs) + " | "
              + " | ".join(f"{v[c]:.2f}" for c in cands) + " |", flush=True)
    print("| **min / mean (MoS2 left out: the fits are made there)** | | " + " | ".join(
        f"{np.min(table[c][1:]):.2f} / {np.mean(table[c][1:]):.2f}" for c in cands) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
