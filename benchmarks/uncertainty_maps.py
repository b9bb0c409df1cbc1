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
  its ground truth (what it cannot: shows what the fit's reference does);
- ``shipped``: the spread over the 3 members and their x-mirrored views (what
  ``reconstruct`` returns with the shipped ``mirror_average``);
- ``dropout``: each member's output variance under its own dropout (rate p before the dense
  layer: p/(1 − p)·Σᵢ (wᵢfᵢ)², exact, no sampling), mean over the members (and their mirrored
  views), as a standard deviation; ``spread ⊕ dropout`` / ``shipped ⊕ dropout``: √(spread² +
  that variance), the predictive variance of an ensemble of dropout networks (law of total
  variance: no weight to choose);
- ``feature distance``: a last-layer Laplace-style map, √(φᵀ(C + λI)⁻¹φ) of each position's
  dense-layer features φ, C their second-moment matrix on MoS2's training half (λ 0.1 × the
  mean eigenvalue), mean over the members — distance from the training data in a space the
  model uses;
- ``noise split``: the image's own dose noise, measured — the recorded counts split into two
  halves by binomial thinning (each count kept with probability ½: two independent Poisson
  data sets at half the dose, whose sum is the recording), each reconstructed as shipped;
  |A − B| / 2 is a one-draw estimate of the full-dose image's noise standard deviation
  (the image's noise variance scales as 1/dose); ``shipped ⊕ noise``: √(shipped spread² +
  that noise²): the members' disagreement plus the input's noise, no weight to choose.
  Needs counts (integers): the bundled samples and the simulations are; a detector's
  calibrated intensities need its gain first.
- ``|CNN − linear|``: the CNN's local disagreement with the default linear model
  (``--linear``, fine-tuned on the same label: the same kind of image, another kind of model;
  scale/offset fitted), alone and ``shipped ⊕ |CNN − linear|``;
- ``views' spread``: the shipped spread recomputed from the 2 M views (a check that they are
  the shipped ones); ``aligned spread``: their spread after each view is mapped onto their
  mean by a scale/offset fit (a gain difference between members alone gives a spread
  proportional to the image, peaking on the atoms); ``detail spread``: the spread of the
  views' fine detail (each minus its 1.5-step Gaussian blur); ``mirror disagreement``: half
  the difference between the members' mean and their mirrored views' mean (how far the
  ensemble is from the symmetry it was trained to respect); ``members' spread (views
  averaged)``: the spread of each member's two-view mean (the disagreement between members
  alone);
- ``shipped pooled 1`` / ``2``: the shipped spread's variance pooled over a Gaussian
  neighbourhood of 1 / 2 scan steps (more samples per standard deviation, less detail);
- ``error model (truth, LOO): …``: the error model's log-linear form on those features fitted
  against the *exact potential* of all the other files (MoS2 and PrScO3 included; leave one
  out) and applied to the one left out — what fitting it on the base library's exact labels
  instead of the MoS2 label could give.

    python benchmarks/uncertainty_maps.py [--tuned benchmarks/_out/transfer/default_conv4d.pt]
"""

from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import replace
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


def views(loaded, dataset, a: np.ndarray) -> np.ndarray:
    """The 2 M images the shipped map's spread is taken over ``(2 M, Ny, Nx)``: each member's
    own (``a``, from :func:`members`) and its x-mirrored view's, mirrored back (from the mean of
    the two that an ensemble of that member alone with ``mirror_average`` returns)."""
    from napari_4dstem_ml.models.ensemble import Ensemble
    from napari_4dstem_ml.predict.events import finish
    from napari_4dstem_ml.predict.pipeline import iter_reconstruct

    both = np.stack([finish(iter_reconstruct(Ensemble([m], mirror_average=True),
                                             loaded.preprocessor, dataset)).image
                     for m in loaded.model.members]).astype(np.float64)
    return np.concatenate([a, 2 * both - a])


def aligned_spread(v: np.ndarray) -> np.ndarray:
    """The views' spread after each is mapped onto their mean by a scale/offset fit: what the
    views disagree on beyond a global contrast and level (a gain difference alone makes a
    spread proportional to the image, peaking on the atoms)."""
    from napari_4dstem_ml.metrics import fit_scale_offset

    mean = v.mean(0)
    return np.stack([fit_scale_offset(x, mean)[2] for x in v]).std(0)


def detail_spread(v: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """The views' spread of fine detail only (each minus its Gaussian blur of ``sigma``
    scan steps)."""
    from scipy import ndimage

    return np.stack([x - ndimage.gaussian_filter(x, sigma, mode="nearest") for x in v]).std(0)


def pooled(spread: np.ndarray, sigma: float) -> np.ndarray:
    """The spread's variance pooled over a Gaussian neighbourhood of ``sigma`` scan steps (a
    standard deviation from 6 views is itself noisy; neighbours are more samples)."""
    from scipy import ndimage

    return np.sqrt(ndimage.gaussian_filter(spread**2, sigma, mode="nearest"))


def leave_one_out_error_maps(per_file: list[dict], features: tuple[str, ...]) -> list[np.ndarray]:
    """For each file, the error model (``error_model``'s features and log-linear form) fitted
    against the *exact potential* at the label's resolution of all the other files (each file
    weighted alike, edges cropped 3 px) and applied to it: what an error model fitted on the
    base library's exact labels, instead of the MoS2 label, could do on a new material."""
    from napari_4dstem_ml.error_model import _EPS, _level, error_features, local_rms_error

    rows = []
    for d in per_file:
        img, sp = d["views"].mean(0), d["views"].std(0)
        f = error_features(img, sp)
        use = np.zeros(img.shape, bool)
        use[3:-3, 3:-3] = True
        x = np.stack([f[k][use] for k in features] + [np.ones(int(use.sum()))], 1)
        y = np.log(local_rms_error(img, d["truth"])[use] / _level(img, sp) + _EPS)
        w = 1 / np.sqrt(use.sum())
        rows.append((x * w, y * w, f, _level(img, sp)))
    out = []
    for i, (_, _, f, level) in enumerate(rows):
        beta = np.linalg.lstsq(np.concatenate([r[0] for j, r in enumerate(rows) if j != i]),
                               np.concatenate([r[1] for j, r in enumerate(rows) if j != i]),
                               rcond=None)[0]
        log_e = beta[-1] + sum(c * f[k] for k, c in zip(features, beta[:-1]))
        out.append(np.exp(log_e) * level)
    return out


def _cnn_with_head(member, head):
    """A copy of the CNN4d ``member`` whose dense layer is replaced by ``head(self, flat)``
    (``flat``: the dense layer's input ``(B, Ny, Nx, F)``, float64)."""
    from napari_4dstem_ml.models.cnn4d import CNN4d

    class _Head(CNN4d):
        def _head(self, f):
            b, c, n0, n1 = f.shape[:4]
            return head(self, f.permute(0, 2, 3, 1, 4, 5).reshape(b, n0, n1, -1).double()).float()

    m = _Head(member.config, member.detector_shape)
    m.load_state_dict(member.state_dict())
    return m.eval()


def _per_member(loaded, dataset, head, mirror: bool = False) -> np.ndarray:
    """``head(i)``'s map of each member i ``(M, Ny, Nx)``, in the model's standardised units
    (``mirror``: the mean over each member's view and its x-mirrored one)."""
    from napari_4dstem_ml.models.ensemble import Ensemble
    from napari_4dstem_ml.predict.events import finish
    from napari_4dstem_ml.predict.pipeline import iter_reconstruct

    pre = loaded.preprocessor
    out = [finish(iter_reconstruct(Ensemble([_cnn_with_head(m, head(i))], mirror_average=mirror),
                                   pre, dataset)).image
           for i, m in enumerate(loaded.model.members)]
    return (np.stack(out).astype(np.float64) - pre.label_mean) / pre.label_std


def dropout_variance(loaded, dataset, mirror: bool = False) -> np.ndarray:
    """Each member's output variance under its dropout ``(M, Ny, Nx)``, label units²
    (``mirror``: the mean of its two views')."""
    def head(i):
        def var(self, flat):
            p = float(self.config.dropout)
            return (flat**2) @ (self.dense.weight.double().reshape(-1) ** 2) * (p / (1 - p))
        return var

    return _per_member(loaded, dataset, head, mirror) * loaded.preprocessor.label_std**2


def feature_precisions(loaded, training, lam: float = 0.1) -> list:
    """Per member, (C + λ·mean eigenvalue·I)⁻¹ with C the second-moment matrix of the dense
    layer's features over the data set ``training`` (the positions the model was tuned on)."""
    import torch

    grams = [[0, 0] for _ in loaded.model.members]

    def head(i):
        def collect(self, flat):
            x = flat.reshape(-1, flat.shape[-1])
            grams[i][0] = grams[i][0] + x.T @ x
            grams[i][1] += x.shape[0]
            return flat[..., 0] * 0 + 1
        return collect

    _per_member(loaded, training, head)
    out = []
    for g, n in grams:
        c = (g / n).numpy()
        out.append(torch.from_numpy(np.linalg.inv(c + lam * np.linalg.eigvalsh(c).mean() * np.eye(len(c)))))
    return out


def feature_distance(loaded, dataset, precisions) -> np.ndarray:
    """√(φᵀ P φ) of each member's dense-layer features φ ``(M, Ny, Nx)`` (P from
    :func:`feature_precisions`)."""
    def head(i):
        return lambda self, flat: ((flat @ precisions[i]) * flat).sum(-1)

    return np.sqrt(np.clip(_per_member(loaded, dataset, head), 0, None))


def noise_split(loaded, dataset, seed: int = 0) -> np.ndarray | None:
    """|A − B| / 2 of the shipped reconstructions of the two binomial halves of
    ``dataset``'s counts ``(Ny, Nx)``, label units (``None`` when the data are not counts)."""
    from napari_4dstem_ml.predict.events import finish
    from napari_4dstem_ml.workflow import reconstruct

    counts = np.asarray(dataset.data)
    if counts.min() < 0 or not np.array_equal(counts, np.round(counts)):
        return None
    a = np.random.default_rng(seed).binomial(counts.astype(np.int64), 0.5)
    halves = [finish(reconstruct(loaded, replace(dataset, data=h.astype(np.float32)))).image
              for h in (a, counts - a)]
    return np.abs(halves[0] - halves[1]).astype(np.float64) / 2


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
    from development import DEFAULT_DATA, development_files
    from references import label_truth

    from napari_4dstem_ml.base_model import load_base_model
    from napari_4dstem_ml.baselines import classical_baselines
    from napari_4dstem_ml.error_model import ErrorModel
    from napari_4dstem_ml.io import load
    from napari_4dstem_ml.metrics import fit_scale_offset, pearson_r
    from napari_4dstem_ml.metrics import uncertainty_error_correlation as rho
    from napari_4dstem_ml.predict.events import finish
    from napari_4dstem_ml.samples import load_sample, sample_path
    from napari_4dstem_ml.training.checkpoint import load_checkpoint
    from napari_4dstem_ml.workflow import reconstruct, registered_label

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tuned", default=str(REPO / "benchmarks/_out/transfer/default_conv4d.pt"))
    ap.add_argument("--linear", default=str(REPO / "benchmarks/_out/transfer/default_linear.pt"))
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = ap.parse_args(argv)
    files = development_files(args.data)
    tuned, base = load_checkpoint(args.tuned), load_base_model("conv4d")
    linear = load_checkpoint(args.linear)
    em = ErrorModel.from_dict(tuned.info.get("train_summary", {}).get("error_model"))

    mos2_ds = load_sample("mos2").dataset
    mos2_train = replace(mos2_ds, data=mos2_ds.data[: mos2_ds.scan_shape[0] // 2])
    precisions = feature_precisions(tuned, mos2_train)
    per_file = []
    for f in files:
        ds = load(f, dataset="datacube/data")
        truth = label_truth(f)
        m, b = members(tuned, ds), members(base, ds)
        img = m.mean(0)
        s, o, _ = fit_scale_offset(b.mean(0), img)
        cl = classical_baselines(ds)
        adf = cl.adf if cl.adf is not None else cl.icom
        shipped = finish(reconstruct(tuned, ds))
        lin = finish(reconstruct(linear, ds)).image
        vw = views(tuned, ds, m)
        per_file.append(dict(name=Path(f).stem, ds=ds, truth=truth, m=m, b=s * b + o, img=img,
                             views=vw,
                             bias=np.abs(img - fit_scale_offset(adf, img)[2]), adf=cl.adf,
                             icom=cl.icom, shipped=shipped.spread, shipped_img=shipped.image,
                             dvar=dropout_variance(tuned, ds).mean(0),
                             dvar_mirrored=dropout_variance(tuned, ds, mirror=True).mean(0),
                             fdist=feature_distance(tuned, ds, precisions).mean(0),
                             noise=noise_split(tuned, ds),
                             vs_linear=np.abs(shipped.image - fit_scale_offset(lin, shipped.image)[2])))
    # the var+bias model's fits on MoS2's lower half (the first file)
    mos2 = per_file[0]
    lab = finish(registered_label(mos2_ds, sample_path("mos2"),
                                  dataset_name="label/image"))[0]
    rows = (32, mos2["img"].shape[0] - 3)
    coef_label = fit_var_bias(mos2["m"].std(0), mos2["bias"], mos2["img"], lab, rows)
    coef_truth = fit_var_bias(mos2["m"].std(0), mos2["bias"], mos2["img"], mos2["truth"], rows)
    print(f"var+bias fitted on MoS2's lower half: b/a = {coef_label[1] / coef_label[0]:.3g} "
          f"against the label, {coef_truth[1] / coef_truth[0]:.3g} against the truth")

    cands = ("spread 2", "spread 3", "base 3", "tuned+base 6", "error model", "|CNN-ADF|",
             "var+bias (label)", "var+bias (truth)", "shipped", "dropout", "spread ⊕ dropout",
             "shipped ⊕ dropout", "feature distance", "noise split", "shipped ⊕ noise",
             "|CNN-linear|", "shipped ⊕ |CNN-linear|", "views' spread", "aligned spread",
             "detail spread", "mirror disagreement", "members' spread (views averaged)",
             "shipped pooled 1", "shipped pooled 2", "error model (truth, LOO): spread",
             "error model (truth, LOO): spread, gradient",
             "error model (truth, LOO): spread, gradient, detail")
    loo = {names: leave_one_out_error_maps(per_file, names)
           for names in (("spread",), ("spread", "gradient"), ("spread", "gradient", "detail"))}
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
            "dropout": rho(img, np.sqrt(d["dvar"]), t),
            "shipped": rho(d["shipped_img"], d["shipped"], t),
            "spread ⊕ dropout": rho(img, np.sqrt(sp**2 + d["dvar"]), t),
            "shipped ⊕ dropout": rho(d["shipped_img"], np.sqrt(d["shipped"] ** 2 + d["dvar_mirrored"]), t),
            "feature distance": rho(img, d["fdist"], t),
        }
        nz = d["noise"]
        v["noise split"] = float("nan") if nz is None else rho(d["shipped_img"], nz, t)
        v["shipped ⊕ noise"] = (float("nan") if nz is None else
                                rho(d["shipped_img"], np.sqrt(d["shipped"] ** 2 + nz**2), t))
        v["|CNN-linear|"] = rho(d["shipped_img"], d["vs_linear"], t)
        v["shipped ⊕ |CNN-linear|"] = rho(d["shipped_img"],
                                          np.sqrt(d["shipped"] ** 2 + d["vs_linear"] ** 2), t)
        vw = d["views"]
        v["views' spread"] = rho(vw.mean(0), vw.std(0), t)
        v["aligned spread"] = rho(vw.mean(0), aligned_spread(vw), t)
        v["detail spread"] = rho(vw.mean(0), detail_spread(vw), t)
        half = len(vw) // 2
        v["mirror disagreement"] = rho(vw.mean(0), np.abs(vw[:half].mean(0) - vw[half:].mean(0)) / 2, t)
        v["members' spread (views averaged)"] = rho(vw.mean(0), ((vw[:half] + vw[half:]) / 2).std(0), t)
        v["shipped pooled 1"] = rho(vw.mean(0), pooled(vw.std(0), 1.0), t)
        v["shipped pooled 2"] = rho(vw.mean(0), pooled(vw.std(0), 2.0), t)
        for names, maps in loo.items():
            v["error model (truth, LOO): " + ", ".join(names)] = rho(
                vw.mean(0), maps[per_file.index(d)], t)
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
