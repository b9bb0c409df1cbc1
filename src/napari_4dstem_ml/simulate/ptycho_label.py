"""Replace the MoS2 sample's label with a ptychographic reconstruction made by py4DSTEM.

Generation-time only: this script is not imported by the plugin and py4DSTEM is not a
dependency of napari-4dstem-ml. It was run once with py4DSTEM 0.14.18 (single-slice
ptychography, CPU) in a separate environment that has py4DSTEM, numpy, scipy and h5py::

    python -m venv peers && peers/bin/pip install py4DSTEM==0.14.18
    peers/bin/python src/napari_4dstem_ml/simulate/ptycho_label.py sample_data/mos2_monolayer.h5

It reads the 4D data of the sample file, reconstructs the object, and writes a copy of the file
in which only the label changes: the reconstruction's phase (rad, on py4DSTEM's own object
grid, padding included) becomes ``/label/image`` with ``pixel_size_A``, ``origin_A`` (y, x in Å
of its pixel (0, 0) relative to scan position (0, 0)) and ``label_method``; the previous
``/label/image`` is kept as ``/label/exact_phase_blurred`` (attributes included) when it was
the exact-phase stand-in. The copy then atomically replaces the file (``os.replace``).

Axis conventions: the file's data are ``(scan_y, scan_x, ky, kx)``; py4DSTEM's
``(Rx, Ry, Qx, Qy)`` are taken to be those axes in that order, so the object array is
``(y, x)`` directly (no scan rotation, no transpose: both are forced, not fitted).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PY4DSTEM_VERSION_USED = "0.14.18"


@dataclass(frozen=True)
class PtychoSettings:
    """Reconstruction settings. ``bin_factor`` sums detector pixels (bin × bin);
    ``padded_shape`` zero-pads the (binned) patterns to set the object pixel size
    λ / (padded_shape · bin · detector pixel)."""

    bin_factor: int = 2
    padded_shape: int = 256
    num_iter: int = 6
    step_size: float = 0.5
    max_batch_size: int = 256
    seed: int = 1


@dataclass(frozen=True)
class PtychoLabel:
    """A reconstruction's phase (rad, ``(y, x)``) with its grid: ``pixel_size_A`` (Å) and
    ``origin_A`` (y, x position in Å of pixel (0, 0) relative to scan position (0, 0))."""

    phase: np.ndarray
    pixel_size_A: float
    origin_A: tuple[float, float]
    method: str
    error_per_iteration: tuple[float, ...]
    seconds: float


def reconstruct(path: str | Path, settings: PtychoSettings = PtychoSettings(),
                log=print) -> PtychoLabel:
    """Single-slice ptychography (py4DSTEM, gradient descent, CPU) of the sample at ``path``."""
    import h5py
    import py4DSTEM
    from py4DSTEM.process.phase import SingleslicePtychography

    t0 = time.time()
    with h5py.File(path, "r") as f:
        d = f["datacube/data"]
        step = np.asarray(d.attrs["scan_step_A"], float)
        kpix = np.asarray(d.attrs["detector_pixel_mrad"], float)
        energy = float(d.attrs["energy_ev"])
        alpha = float(d.attrs["convergence_mrad"])
        data = d[()].astype(np.float32)
    if step[0] != step[1] or kpix[0] != kpix[1]:
        raise ValueError(f"{path}: square scan and detector pixels expected, got {step}, {kpix}")
    b = settings.bin_factor
    ny, nx, nk, nl = data.shape
    if nk % b or nl % b:
        raise ValueError(f"bin_factor {b} does not divide the detector shape {(nk, nl)}")
    data = data.reshape(ny, nx, nk // b, b, nl // b, b).sum((3, 5))
    dc = py4DSTEM.DataCube(data)
    dc.calibration.set_R_pixel_size(float(step[0]))
    dc.calibration.set_R_pixel_units("A")
    dc.calibration.set_Q_pixel_size(float(kpix[0]) * b)
    dc.calibration.set_Q_pixel_units("mrad")
    ptycho = SingleslicePtychography(energy=energy, datacube=dc, semiangle_cutoff=alpha,
                                     device="cpu", verbose=False)
    n = settings.padded_shape
    ptycho.preprocess(padded_diffraction_intensities_shape=(n, n), plot_center_of_mass=False,
                      plot_rotation=False, plot_probe_overlaps=False, force_com_rotation=0.0,
                      force_com_transpose=False, fit_function="plane")
    log(f"ptycho: preprocessed in {time.time() - t0:.0f} s, object {ptycho._object.shape}, "
        f"pixel {ptycho.sampling[0]:.5f} A")
    ptycho.reconstruct(num_iter=settings.num_iter, reconstruction_method="gradient-descent",
                       step_size=settings.step_size, max_batch_size=settings.max_batch_size,
                       seed_random=settings.seed, progress_bar=False, object_positivity=False,
                       tv_denoise=False, butterworth_filter=False, gaussian_filter=False)
    sampling = tuple(float(s) for s in ptycho.sampling)
    if abs(sampling[0] - sampling[1]) > 1e-9 * sampling[0]:
        raise ValueError(f"non-square object pixels {sampling}")
    # probe positions (object pixels, probe centre; fixed during the reconstruction) minus the
    # scan index × step gives the object pixel of scan position (0, 0)
    pos = np.asarray(ptycho._positions_px, float)
    idx = np.stack(np.indices((ny, nx)), -1).reshape(-1, 2) * step / np.asarray(sampling)
    off = pos - idx
    if off.std(0).max() > 1e-3:
        raise ValueError(f"positions are not a plain grid (spread {off.std(0)} px)")
    origin = (-float(off[:, 0].mean()) * sampling[0], -float(off[:, 1].mean()) * sampling[1])
    phase = np.angle(np.asarray(ptycho.object)).astype(np.float32)
    err = tuple(float(e) for e in getattr(ptycho, "error_iterations", ()))
    method = (
        f"py4DSTEM {py4DSTEM.__version__} ptychography: single-slice, complex object, "
        f"{settings.num_iter} iterations of gradient descent (step {settings.step_size}, "
        f"batches of {settings.max_batch_size}), probe from the {alpha} mrad aperture and "
        f"refined, positions fixed on the scan grid, CoM/descan fitted (plane), rotation 0 "
        f"and no transpose forced; detector binned {b}x{b} and zero-padded to {n}x{n} "
        f"(object pixel {sampling[0]:.4f} A); no regularisation; phase = angle(object), "
        f"full object with py4DSTEM's padding"
    )
    seconds = time.time() - t0
    log(f"ptycho: {settings.num_iter} iterations done after {seconds:.0f} s, error {err}")
    return PtychoLabel(phase, sampling[0], origin, method, err, seconds)


def write_label(path: str | Path, label: PtychoLabel) -> Path:
    """Copy ``path`` with ``label`` as ``/label/image`` (the exact-phase stand-in kept as
    ``/label/exact_phase_blurred``), then atomically replace ``path`` with the copy."""
    import h5py

    path = Path(path)
    tmp = path.with_name(path.name + ".ptycho.tmp")
    try:
        with h5py.File(path, "r") as src, h5py.File(tmp, "w") as dst:
            for k, v in src.attrs.items():
                dst.attrs[k] = v
            for name in src:
                if name != "label":
                    src.copy(src[name], dst, name=name)
            old = src["label"]
            lab = dst.create_group("label")
            for k, v in old.attrs.items():
                lab.attrs[k] = v
            keep = "exact_phase_blurred"
            if keep in old:
                src.copy(old[keep], lab, name=keep)
            elif "NOT a ptychographic" in str(old["image"].attrs.get("label_method", "")):
                src.copy(old["image"], lab, name=keep)
            li = lab.create_dataset("image", data=label.phase, compression="gzip",
                                    compression_opts=6, shuffle=True)
            li.attrs["pixel_size_A"] = float(label.pixel_size_A)
            li.attrs["origin_A"] = np.asarray(label.origin_A, float)
            li.attrs["label_method"] = label.method
            li.attrs["units"] = "rad"
            li.attrs["reconstruction_seconds"] = round(label.seconds, 1)
            li.attrs["error_per_iteration"] = np.asarray(label.error_per_iteration, float)
            for group in (dst, dst["datacube"], lab):
                group.attrs["label_method"] = label.method
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("file", help="MoS2 sample file (rewritten in place, atomically)")
    p.add_argument("--iterations", type=int, default=PtychoSettings.num_iter)
    p.add_argument("--bin", type=int, default=PtychoSettings.bin_factor)
    p.add_argument("--padded-shape", type=int, default=PtychoSettings.padded_shape)
    a = p.parse_args(argv)
    s = PtychoSettings(bin_factor=a.bin, padded_shape=a.padded_shape, num_iter=a.iterations)
    label = reconstruct(a.file, s)
    write_label(a.file, label)
    print(f"wrote {a.file}: label {label.phase.shape} at {label.pixel_size_A:.5f} A, "
          f"origin {label.origin_A}")


if __name__ == "__main__":
    main()
