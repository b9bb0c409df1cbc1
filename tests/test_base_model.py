"""The shipped base models (small, described, trained on the library and nothing held out) and
the recipe that builds them, run end to end on a tiny library written by hand in the
simulator's file layout."""

from __future__ import annotations

import json
from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch

from napari_4dstem_ml.base_model import (
    BASE_MODEL_FILES,
    base_model_path,
    load_base_model,
)
from napari_4dstem_ml.base_model.recipe import RECIPE, attach_pattern_domains, train_base_models
from napari_4dstem_ml.simulate.suites import HELD_OUT_MATERIALS
from napari_4dstem_ml.training.checkpoint import load_checkpoint
from napari_4dstem_ml.training.synthetic import make_synthetic


@pytest.mark.parametrize("kind", sorted(BASE_MODEL_FILES))
def test_shipped_base_model_is_small_and_states_its_recipe_and_data(kind):
    path = base_model_path(kind)
    assert path.stat().st_size < 5 * 2**20  # small enough to ship
    lm = load_base_model(kind)
    prov = lm.info["provenance"]
    assert prov["base_model"] == kind
    assert prov["recipe"]["angle_units"] == RECIPE.angle_units
    files = [rec["file"] for rec in prov["library"]]
    assert len(files) >= 10
    materials = {rec["config"]["structure"]["name"] for rec in prov["library"]}
    assert not materials & HELD_OUT_MATERIALS  # nothing of the transfer suite was trained on
    energies = {rec["config"]["energy_ev"] for rec in prov["library"]}
    assert min(energies) <= 80e3 and max(energies) >= 300e3
    dom = lm.info["train_summary"]["domain"]
    assert dom["n_datasets"] == len(files)
    lo, hi = dom["ranges"]["energy_kev"]
    assert (lo, hi) == (min(energies) / 1e3, max(energies) / 1e3)
    if kind == "conv4d":
        assert lm.model_config.kind == "ensemble" and lm.model_config.size >= 3
        assert lm.preprocessor.config.angle_units == "alpha"


def _library_item(path, seed, energy_ev, step):
    """One library file as the simulator writes it: /datacube/data (counts) with its
    calibration attributes, /noise_free/patterns, /ground_truth/potential and its 0.4 Å
    low-pass, the simulation config as JSON."""
    syn = make_synthetic((28, 28), (24, 24), dose=2000.0, seed=seed, energy_ev=energy_ev,
                         scan_step_A=step, detector_pixel_mrad=2.0)
    clean = make_synthetic((28, 28), (24, 24), dose=2000.0, seed=seed, energy_ev=energy_ev,
                           scan_step_A=step, detector_pixel_mrad=2.0, noise=False)
    cal = syn.dataset.calibration
    with h5py.File(path, "w") as f:
        d = f.create_dataset("datacube/data", data=np.asarray(syn.dataset.data, np.float32))
        d.attrs["scan_step_A"] = np.asarray(cal.scan_step_A, float)
        d.attrs["detector_pixel_mrad"] = np.asarray((2.0, 2.0))
        d.attrs["energy_ev"] = float(energy_ev)
        d.attrs["convergence_mrad"] = float(cal.convergence_mrad)
        nf = np.asarray(clean.dataset.data, np.float32)
        f.create_dataset("noise_free/patterns", data=nf / nf.sum(axis=(2, 3), keepdims=True))
        f.create_dataset("ground_truth/potential", data=syn.truth.astype(np.float32))
        f.create_dataset("ground_truth/potential_lowpass_0.4A", data=syn.label.astype(np.float32))
        f.attrs["simulation_config"] = json.dumps(
            {"name": path.stem, "energy_ev": energy_ev, "structure": {"name": "synthetic"}})


def test_recipe_trains_base_models_with_provenance_and_domain(tmp_path):
    lib = tmp_path / "library"
    lib.mkdir()
    _library_item(lib / "a.h5", 1, 80e3, 0.2)
    _library_item(lib / "b.h5", 2, 200e3, 0.3)
    tiny = replace(
        RECIPE, grid=16, max_angle=2.0,
        cnn={"cluster_size": 5, "channels": [2, 2], "dropout": 0.0, "ensemble": 3},
        cnn_train={"epochs": 1, "lr": 1e-3, "batch_size": 8, "steps_per_epoch": 2, "seed": 0},
        linear={"cluster_size": 3, "angle_units": "mrad", "max_angle": 24.0, "grid": 16})
    gen = train_base_models(lib, tmp_path / "out", recipe=tiny)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            paths = stop.value
            break
    assert set(paths) == {"linear", "conv4d"}
    for kind, path in paths.items():
        assert path.name == BASE_MODEL_FILES[kind]
        lm = load_checkpoint(path)
        prov = lm.info["provenance"]
        assert prov["recipe"] == tiny.to_dict()
        assert [r["file"] for r in prov["library"]] == ["a.h5", "b.h5"]
        dom = lm.info["train_summary"]["domain"]
        assert dom["n_datasets"] == 2
        assert dom["ranges"]["energy_kev"] == [80.0, 200.0]
        assert dom["ranges"]["scan_step_A"] == pytest.approx([0.2, 0.3])
        assert lm.preprocessor.config.scan_resample is False
    cnn = load_checkpoint(paths["conv4d"])
    assert cnn.model_config.kind == "ensemble" and cnn.model_config.size == 3
    assert cnn.preprocessor.config.angle_units == "alpha"
    assert load_checkpoint(paths["linear"]).preprocessor.config.angle_units == "mrad"
    # the trained CNN's mirrored views were measured on the library's validation rows; storing
    # the pattern domains afterwards (for base models trained before they existed) measures
    # them the same way, keeps the weights and lets the config follow the record
    chosen = cnn.info["train_summary"]["mirror_average"]
    assert chosen["n_sets"] == 2 and chosen["kept"] == cnn.model_config.mirror_average
    assert chosen["kept"] == (chosen["loss_z"] < 2.0)
    attach_pattern_domains(lib, tmp_path / "out", kinds=("conv4d",))
    again = load_checkpoint(paths["conv4d"])
    summary = again.info["train_summary"]
    for a, b in zip(cnn.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    assert summary["mirror_average"] == pytest.approx(chosen, abs=1e-4)
    assert again.model_config.mirror_average == chosen["kept"]
    versus = [d["versus_classical"] for d in summary["pattern_domains"]]
    r_chosen = chosen["r_mirrored"] if chosen["kept"] else chosen["r_members"]
    assert np.mean([v["r_model"] for v in versus]) == pytest.approx(r_chosen, abs=1e-4)
