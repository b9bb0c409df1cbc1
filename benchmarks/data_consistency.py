"""Do the recorded patterns say where the CNN's image is wrong? (issue 17: an uncertainty that
ranks the error, ρ ≥ 0.5.) Measured on our own development items, never on the transfer suite.

Every map in ``benchmarks/uncertainty_maps.py`` is computed from the model's images; this one
asks the data. The CNN's image is taken as the phase of a single-slice object (phase =
``scale`` × image), a probe is built from the file's energy and convergence angle (defocus
fitted), and each position's pattern is predicted as |FFT(probe · exp(i·phase))|² (the window
the detector's own sampling sets: N detector pixels ↔ an object pixel of λ/(N·Δθ)), scaled to
the recorded counts. Global ``scale`` and defocus are fitted to 256 positions (a grid, then Adam).

Printed per file:

- the mean amplitude misfit Σ_k (√n_k − √λ_k)² / counts per position for a flat object, the CNN's
  image and the ground truth at the label's resolution (its own scale fitted): can the data tell
  the truth from the CNN's image at all? Beside it, the CNN's misfit beyond its Poisson
  expectation (the same units: 0 when the image explains the patterns to the noise);
- ρ (``metrics.uncertainty_error_correlation``, as the transfer benchmark scores the shipped
  map) of: the shipped spread; the per-position misfit; the misfit in excess of its Poisson
  expectation under the model; |∂misfit/∂image| (where the data pull the image); and the
  rank-mean of the spread and the misfit (no weight to choose); ``rule``: that rank-mean where
  more than half the CNN's misfit is beyond the Poisson noise (the data's own verdict that the
  single-slice model misses physics: the thick crystals), the spread elsewhere — chosen on the
  development set, run once on the suite with ``--files``.

    python benchmarks/data_consistency.py [--tuned benchmarks/_out/transfer/default_conv4d.pt]
        [--data benchmarks/_data/development]          # about 8 min on 2 cores
    python benchmarks/data_consistency.py --files benchmarks/_data/transfer/*.h5   # ~9 min
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


class PhaseObjectModel:
    """Single-slice forward model of a 4D data set ``(Ny, Nx, N, N)`` for an image on its scan
    grid (``(Ny, Nx)``, any unit; phase = ``scale`` × image, rad)."""

    def __init__(self, dataset, batch: int = 128):
        import torch

        from napari_4dstem_ml.dataset import electron_wavelength_A

        c = dataset.calibration
        self.ny, self.nx, n, n2 = dataset.data.shape
        if n != n2:
            raise ValueError(f"square patterns needed, got {n} × {n2}")
        self.n, self.batch = n, batch
        self.lam = electron_wavelength_A(c.energy_ev)
        self.dk = c.detector_pixel[0] * 1e-3 / self.lam  # Å⁻¹ per detector pixel
        self.k_alpha = c.convergence_mrad * 1e-3 / self.lam
        dx_over_step = 1.0 / (n * self.dk) / c.scan_step[0]
        d = np.asarray(dataset.data, np.float32).reshape(-1, n, n)
        self.measured = torch.from_numpy(np.sqrt(np.maximum(d, 0)))
        self.counts = torch.from_numpy(d.reshape(len(d), -1).sum(1))
        mean = d.mean(0)
        disc = mean > 0.5 * mean.max()
        yy, xx = np.mgrid[:n, :n]
        cy, cx = (yy * disc).sum() / disc.sum() - n // 2, (xx * disc).sum() / disc.sum() - n // 2
        k = (np.arange(n) - n // 2) * self.dk
        self.k2 = torch.from_numpy(np.add.outer(k ** 2, k ** 2))
        off = (np.arange(n) - n // 2) * dx_over_step
        oy, ox = np.meshgrid(off, off, indexing="ij")
        self.offsets = torch.from_numpy(np.stack([ox, oy], -1).astype(np.float32))
        r = np.arange(n) - n // 2
        # a real-space phase ramp moves the predicted disc to where the data have it
        self.ramp = torch.from_numpy(np.exp(2j * np.pi * np.add.outer(cy * r, cx * r) / n))

    def probe(self, defocus_A):
        import torch

        aperture = torch.sigmoid((self.k_alpha - torch.sqrt(self.k2)) / (0.5 * self.dk))
        pk = aperture * torch.exp(-1j * torch.pi * self.lam * defocus_A * self.k2)
        p = torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(pk)))
        return p / torch.sqrt((p.abs() ** 2).sum()) * self.ramp

    def amplitudes(self, image, scale, defocus_A, idx):
        """Predicted √counts ``(len(idx), N, N)`` at the flat scan indices ``idx``."""
        import torch
        import torch.nn.functional as F

        iy, ix = (idx // self.nx).float(), (idx % self.nx).float()
        x = ix[:, None, None] + self.offsets[None, ..., 0]
        y = iy[:, None, None] + self.offsets[None, ..., 1]
        grid = torch.stack([2 * x / (self.nx - 1) - 1, 2 * y / (self.ny - 1) - 1], -1)
        window = F.grid_sample(image[None, None], grid.reshape(1, -1, self.n, 2),
                               mode="bilinear", padding_mode="border",
                               align_corners=True).reshape(len(idx), self.n, self.n)
        exit_wave = self.probe(defocus_A)[None] * torch.exp(1j * scale * window)
        amp = torch.fft.fftshift(torch.fft.fft2(exit_wave, norm="ortho"), dim=(-2, -1)).abs()
        return (amp * torch.sqrt(self.counts[idx])[:, None, None]).float()

    def misfit(self, image, scale, defocus_A, idx=None, backward=False):
        """Σ_k (√n − √λ)² / counts per position (``idx``: all when None); with ``backward``
        the gradients accumulate into the leaf tensors."""
        import torch

        idx = torch.arange(self.ny * self.nx) if idx is None else idx
        out = torch.zeros(len(idx))
        for s in range(0, len(idx), self.batch):
            b = idx[s: s + self.batch]
            m = ((self.amplitudes(image, scale, defocus_A, b) - self.measured[b]) ** 2
                 ).sum((-2, -1)) / self.counts[b]
            if backward:
                m.sum().backward(retain_graph=True)
            out[s: s + len(b)] = m.detach()
        return out

    def excess(self, image, scale, defocus_A) -> np.ndarray:
        """Per position: the misfit minus its Poisson expectation under the model (counts)."""
        import torch
        from scipy.stats import poisson

        lam_grid = np.logspace(-4, 4, 300)
        expected = []
        for lam in lam_grid:
            n = np.arange(int(lam + 12 * np.sqrt(lam) + 30))
            expected.append(float((poisson.pmf(n, lam) * (np.sqrt(n) - np.sqrt(lam)) ** 2).sum()))
        out = np.zeros(self.ny * self.nx)
        with torch.no_grad():
            for s in range(0, self.ny * self.nx, self.batch):
                b = torch.arange(s, min(s + self.batch, self.ny * self.nx))
                amp = self.amplitudes(image, scale, defocus_A, b)
                lam = np.maximum((amp ** 2).numpy(), 1e-4)
                e = np.interp(np.log(lam), np.log(lam_grid), expected, right=0.25)
                out[b.numpy()] = (((amp - self.measured[b]) ** 2).numpy() - e).sum((-2, -1))
        return out.reshape(self.ny, self.nx)


def fit_scale_defocus(model, image, defocus_A=None, n=256, steps=60, seed=0):
    """Phase scale (and defocus, Å, unless given) minimising the misfit on ``n`` positions."""
    import torch

    idx = torch.from_numpy(np.random.default_rng(seed).choice(model.ny * model.nx, n, replace=False))
    img = torch.from_numpy(image.astype(np.float32))
    dfs = (-60.0, -30.0, 0.0, 30.0, 60.0) if defocus_A is None else (defocus_A,)
    with torch.no_grad():
        _, s0, d0 = min((model.misfit(img, torch.tensor(s), torch.tensor(d), idx).mean().item(), s, d)
                        for s in (0.25, 0.5, 1.0, 2.0, 4.0, 8.0) for d in dfs)
    log_s = torch.tensor(float(np.log(s0)), requires_grad=True)
    d = torch.tensor(float(d0), requires_grad=defocus_A is None)
    params = [log_s] + ([d] if defocus_A is None else [])
    opt = torch.optim.Adam(params, lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        model.misfit(img, torch.exp(log_s), d * 1.0, idx, backward=True)
        if d.grad is not None:
            d.grad *= 100.0  # Å: a useful step for the shared learning rate
        opt.step()
    return float(torch.exp(log_s).detach()), float(d.detach())


def main(argv=None) -> int:
    import torch
    from development import DEFAULT_DATA, development_files
    from references import label_truth
    from scipy.stats import rankdata

    from napari_4dstem_ml.io import load
    from napari_4dstem_ml.metrics import fit_scale_offset
    from napari_4dstem_ml.metrics import uncertainty_error_correlation as rho
    from napari_4dstem_ml.predict.events import finish
    from napari_4dstem_ml.training.checkpoint import load_checkpoint
    from napari_4dstem_ml.workflow import reconstruct

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tuned", default=str(REPO / "benchmarks/_out/transfer/default_conv4d.pt"))
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--files", type=Path, nargs="+",
                    help="score these files (with /ground_truth/potential) instead of the "
                         "development set: the rule's one run on the suite")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    tuned = load_checkpoint(args.tuned)

    def rank(a):
        return rankdata(a.ravel()).reshape(a.shape) / a.size

    cols = ("spread", "misfit", "excess", "|gradient|", "rank-mean(spread, misfit)", "rule")
    print("| file | phase scale / defocus (Å) | misfit: flat / CNN / truth | CNN's beyond noise | "
          + " | ".join(f"ρ {c}" for c in cols) + " |")
    print("|---" * (4 + len(cols)) + "|")
    for f in args.files or development_files(args.data):
        t0 = time.perf_counter()
        ds = load(f, dataset="datacube/data")
        truth = label_truth(f)
        rec = finish(reconstruct(tuned, ds))
        img = rec.image - rec.image.mean()
        model = PhaseObjectModel(ds)
        scale, df = fit_scale_defocus(model, img)
        tr = fit_scale_offset(truth, img)[2]
        tr = tr - tr.mean()
        scale_t, _ = fit_scale_defocus(model, tr, defocus_A=df)
        phi = torch.from_numpy(img.astype(np.float32)).requires_grad_(True)
        misfit = model.misfit(phi, torch.tensor(scale), torch.tensor(df), backward=True)
        grad = np.abs(phi.grad.numpy()).astype(np.float64)
        with torch.no_grad():
            flat = model.misfit(torch.zeros_like(phi), torch.tensor(scale), torch.tensor(df))
            m_truth = model.misfit(torch.from_numpy(tr.astype(np.float32)), torch.tensor(scale_t),
                                   torch.tensor(df))
        misfit_map = misfit.numpy().reshape(img.shape).astype(np.float64)
        excess = model.excess(phi.detach(), torch.tensor(scale), torch.tensor(df))
        beyond = float(excess.mean() / model.counts.mean())
        thick = beyond > 0.5 * float(misfit.mean())  # the data's own verdict, no truth
        maps = {"spread": rec.spread, "misfit": misfit_map, "excess": excess,
                "|gradient|": grad,
                "rank-mean(spread, misfit)": rank(rec.spread) + rank(misfit_map)}
        maps["rule"] = maps["rank-mean(spread, misfit)"] if thick else rec.spread
        rhos = " | ".join(f"{rho(rec.image, maps[c], truth):.2f}" for c in cols)
        print(f"| {f.stem} | {scale:.2f} / {df:+.0f} | {flat.mean():.4f} / {misfit.mean():.4f} / "
              f"{m_truth.mean():.4f} | {beyond:.4f} ({beyond / float(misfit.mean()):.0%}) | "
              f"{rhos} |", flush=True)
        print(f"  ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
