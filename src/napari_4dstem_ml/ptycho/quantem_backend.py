"""The quantem back end: ``quantem.diffractive_imaging.PtychoLite`` (gradient-descent
ptychography in PyTorch, single-slice or multislice), one iteration per :meth:`step`.

quantem's axes: patterns ``(Rx, Ry, Qx, Qy)`` are taken as our ``(scan_y, scan_x, ky, kx)``,
so the object array is ``(y, x)``; the scan-to-detector rotation is forced to
``config.rotation_deg`` (no transpose) or fitted from the centre of mass when it is ``None``.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any

import numpy as np

from .backends import BackendUnavailableError, ObjectGeometry, PtychoData, geometry_from_positions
from .config import PtychoConfig

INSTALL = "pip install 'napari-4dstem-ml[ptycho]'"


def _import_quantem():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import quantem
            from quantem.core.datastructures import Dataset4dstem
            from quantem.diffractive_imaging import PtychographyDatasetRaster, PtychoLite
    except ImportError as exc:
        raise BackendUnavailableError(
            f"ptychography needs the quantem back end ({INSTALL}): {exc}") from exc
    return quantem, Dataset4dstem, PtychographyDatasetRaster, PtychoLite


class QuantemBackend:
    """Factory of :class:`QuantemSession`."""

    name = "quantem"

    def __init__(self) -> None:
        quantem = _import_quantem()[0]
        self.version = str(getattr(quantem, "__version__", "unknown"))

    def start(self, data: PtychoData, config: PtychoConfig,
              positions_mask: np.ndarray | None = None) -> QuantemSession:
        return QuantemSession(data, config, positions_mask)


def _device(config: PtychoConfig) -> str:
    if config.device == "auto":
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    return "gpu" if config.device == "cuda" else "cpu"


class QuantemSession:
    """One quantem reconstruction; quantem's own console output is kept quiet."""

    def __init__(self, data: PtychoData, config: PtychoConfig,
                 positions_mask: np.ndarray | None = None) -> None:
        _, Dataset4dstem, Raster, PtychoLite = _import_quantem()
        self.config = config
        self.mask = (np.ones(data.scan_shape, bool) if positions_mask is None
                     else np.asarray(positions_mask, bool))
        if self.mask.shape != data.scan_shape:
            raise ValueError(f"positions_mask {self.mask.shape} does not match the scan {data.scan_shape}")
        step, kpix = float(data.scan_step_A), float(data.detector_pixel_mrad)
        ds = Dataset4dstem.from_array(np.ascontiguousarray(data.patterns, dtype=np.float32),
                                      sampling=[step, step, kpix, kpix],
                                      units=["A", "A", "mrad", "mrad"])
        n = config.padded_size
        k = data.patterns.shape[-1]
        padded = None if n is None or n <= k else (n, n)
        pad = 0 if padded is None else n // 4
        rng = int(config.seed)
        with _quiet():
            dm = Raster.from_dataset4dstem(ds, verbose=0, learn_descan=False,
                                           learn_scan_positions=False)
            dm.preprocess(com_fit_function="plane",
                          force_com_rotation=config.rotation_deg,
                          force_com_transpose=False if config.rotation_deg is not None else None,
                          padded_diffraction_intensities_shape=padded, plot_rotation=False,
                          plot_com=False, probe_energy=float(data.energy_ev),
                          positions_mask=self.mask)
            multi = config.mode == "multislice"
            self.p = PtychoLite.from_dataset(
                dm, energy=float(data.energy_ev), semiangle_cutoff=float(data.convergence_mrad),
                defocus=float(config.defocus_A), num_slices=config.slices,
                slice_thicknesses=float(config.slice_thickness_A) if multi else None,
                device=_device(config), verbose=0, rng=rng, obj_padding_px=(pad, pad))
        self.dm = dm
        self.iterations_done = 0
        self.losses: list[float] = []

    def _reconstruct(self, n: int) -> None:
        c = self.config
        with _quiet():
            self.p.reconstruct(num_iters=n, lr_obj=c.lr_object, learn_probe=c.learn_probe,
                               lr_probe=c.lr_probe, batch_size=c.batch_size, verbose=0)

    def step(self) -> float:
        self._reconstruct(1)
        self.iterations_done += 1
        loss = float(self.p.iter_losses[-1])
        self.losses.append(loss)
        return loss

    def phase(self) -> np.ndarray:
        obj = np.asarray(self.p.obj)
        ph = np.angle(obj) if np.iscomplexobj(obj) else obj
        ph = ph.reshape(-1, *ph.shape[-2:]).sum(0)  # slices: the projected phase
        return np.ascontiguousarray(ph, dtype=np.float32)

    def geometry(self) -> ObjectGeometry:
        pos = self.dm.scan_positions_px.detach().cpu().numpy()
        px = float(np.asarray(self.dm.obj_sampling)[0])
        return geometry_from_positions(pos, self.mask, px)

    def state(self) -> dict[str, Any]:
        import copy

        p = self.p
        return {
            "iterations_done": self.iterations_done,
            "losses": list(self.losses),
            "object": {k: v.detach().cpu().clone() for k, v in p.obj_model.state_dict().items()},
            "probe": {k: v.detach().cpu().clone() for k, v in p.probe_model.state_dict().items()},
            "optimizers": {k: copy.deepcopy(o.state_dict()) for k, o in p.optimizers.items()},
            "iter_losses": list(p._iter_losses),
            "iter_recon_types": list(p._iter_recon_types),
            "iter_lrs": {k: list(v) for k, v in p._iter_lrs.items()},
            "rng": copy.deepcopy(p.rng.bit_generator.state),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        p = self.p
        if state["iterations_done"] > 0:
            self._reconstruct(0)  # creates the optimizers, which the state then fills
        p.obj_model.load_state_dict(state["object"])
        p.probe_model.load_state_dict(state["probe"])
        for k, sd in state["optimizers"].items():
            p.optimizers[k].load_state_dict(sd)
        p._iter_losses[:] = state["iter_losses"]
        p._iter_recon_types[:] = state["iter_recon_types"]
        p._iter_lrs.clear()
        p._iter_lrs.update({k: list(v) for k, v in state["iter_lrs"].items()})
        p.rng.bit_generator.state = state["rng"]
        self.iterations_done = int(state["iterations_done"])
        self.losses = list(state["losses"])


@contextlib.contextmanager
def _quiet():
    """quantem prints and warns on its own; keep the CLI's and GUI's output ours."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield
