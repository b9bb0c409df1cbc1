"""Checkpoints: round trip, atomic saving, and a clear error for every bad file."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import napari_4dstem_ml  # noqa: E402
from napari_4dstem_ml.dataset import Calibration, Dataset4D  # noqa: E402
from napari_4dstem_ml.export import OutputError  # noqa: E402
from napari_4dstem_ml.models import CNN4dConfig, LinearConfig, build_model  # noqa: E402
from napari_4dstem_ml.predict import predict  # noqa: E402
from napari_4dstem_ml.preprocess import PreprocessConfig, Preprocessor  # noqa: E402
from napari_4dstem_ml.training import checkpoint as ckpt  # noqa: E402
from napari_4dstem_ml.training.checkpoint import (  # noqa: E402
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    arr = rng.poisson(30, size=(9, 8, 16, 16)).astype(np.float32)
    return Dataset4D(arr, Calibration(detector_pixel=(1.5, 1.5), energy_ev=80e3))


def _model(config, ds, seed=0):
    pre = Preprocessor.fit(ds, PreprocessConfig(compression="power", output_shape=(12, 12)))
    pre = pre.with_label_stats(1.5, 0.25)
    torch.manual_seed(seed)
    model = build_model(config, pre.output_shape)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval(), pre


@pytest.mark.parametrize("config", [LinearConfig(cluster_size=3), CNN4dConfig(cluster_size=5, channels=(2, 2))])
def test_round_trip_gives_identical_predictions(tmp_path, data, config):
    model, pre = _model(config, data)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, config, pre, train_summary={"source": "x.h5", "shape": (9, 8)},
                    metrics={"pearson_r": np.float32(0.9)})
    loaded = load_checkpoint(path)
    assert loaded.model_config == config and loaded.preprocessor == pre
    assert loaded.info["package_version"] == napari_4dstem_ml.__version__
    assert loaded.info["train_summary"]["shape"] == [9, 8]
    assert loaded.info["metrics"]["pearson_r"] == pytest.approx(0.9)
    assert loaded.info["detector_grid"]["shape"] == [12, 12]
    assert loaded.info["label_normalisation"] == {"mean": 1.5, "std": 0.25}
    np.testing.assert_array_equal(predict(loaded.model, loaded.preprocessor, data), predict(model, pre, data))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_interrupted_save_leaves_old_file_and_no_temp(tmp_path, data, monkeypatch):
    config = LinearConfig(cluster_size=3)
    model, pre = _model(config, data)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, config, pre)
    before = path.read_bytes()
    model2, _ = _model(config, data, seed=1)
    real_save = torch.save

    def broken_save(obj, f, *a, **kw):
        f.write(b"PK\x03\x04 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OutputError, match=r"model\.pt: could not be written \(disk full\)"):
        save_checkpoint(path, model2, config, pre, overwrite=True)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    # KeyboardInterrupt mid-write behaves the same
    def interrupted(obj, f, *a, **kw):
        f.write(b"x")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model2, config, pre, overwrite=True)
    assert path.read_bytes() == before and len(list(tmp_path.iterdir())) == 1
    monkeypatch.setattr(torch, "save", real_save)
    load_checkpoint(path)


def _write(path, obj):
    torch.save(obj, path)
    return path


class _Unsafe:
    """A class that a weights-only load refuses to unpickle."""


def test_bad_files_raise_clear_errors(tmp_path, data):
    config = LinearConfig(cluster_size=3)
    model, pre = _model(config, data)
    good = save_checkpoint(tmp_path / "good.pt", model, config, pre)
    obj = torch.load(good, weights_only=True)

    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.pt.*not a readable torch") as info:
        load_checkpoint(text)
    # one short line naming the file (refused by its first bytes: torch never parses it)
    msg = str(info.value)
    assert "\n" not in msg and len(msg) < len(str(text)) + 120
    assert "not a napari-4dstem-ml checkpoint" in msg
    pickled = tmp_path / "pickled.pt"
    torch.save({"obj": _Unsafe()}, pickled)
    with pytest.raises(CheckpointError, match="pickled.pt.*pickled Python objects") as info:
        load_checkpoint(pickled)
    assert "\n" not in str(info.value)
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="trunc.pt.*truncated or corrupt") as info:
        load_checkpoint(truncated)
    # one short line; PyTorch's long explanation stays in the chained cause
    assert "\n" not in str(info.value) and info.value.__cause__ is not None
    with pytest.raises(CheckpointError, match="format tag 'other'"):
        load_checkpoint(_write(tmp_path / "tag.pt", {**obj, "format": "other"}))
    with pytest.raises(CheckpointError, match="not a napari-4dstem-ml checkpoint"):
        load_checkpoint(_write(tmp_path / "plain.pt", {"weight": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match="newer.*version 2"):
        load_checkpoint(_write(tmp_path / "future.pt", {**obj, "version": ckpt.VERSION + 1}))
    with pytest.raises(CheckpointError, match="lacks 'state_dict'"):
        load_checkpoint(_write(tmp_path / "nokey.pt", {k: v for k, v in obj.items() if k != "state_dict"}))
    cfg = json.loads(obj["config_json"])
    del cfg["preprocessor"]
    with pytest.raises(CheckpointError, match="incomplete"):
        load_checkpoint(_write(tmp_path / "nopre.pt", {**obj, "config_json": json.dumps(cfg)}))
    sd = dict(obj["state_dict"])
    sd["m"] = torch.zeros(len(sd["m"]) + 1)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(_write(tmp_path / "shape.pt", {**obj, "state_dict": sd}))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize("config, grid", [
    (LinearConfig(cluster_size=5), (16, 20)),
    (CNN4dConfig(cluster_size=5, channels=(2, 3)), (24, 24)),
])
def test_expected_shapes_equal_the_built_models(config, grid):
    from napari_4dstem_ml.models import EnsembleConfig

    for cfg in (config, EnsembleConfig(member=config, size=3)):
        built = {n: tuple(t.shape) for n, t in build_model(cfg, grid).state_dict().items()}
        assert ckpt.expected_state_shapes(cfg, grid) == built


def _hostile_ensemble(tmp_path, data, member):
    """A small file whose description is an ensemble of 32 members on a 512 x 512 grid (the
    linear member's table alone 512 MB each); its stored weights are those of a tiny model."""
    model, pre = _model(member, data)
    good = save_checkpoint(tmp_path / "small.pt", model, member, pre)
    obj = torch.load(good, weights_only=True)
    cfg = json.loads(obj["config_json"])
    cfg["model"] = {"kind": "ensemble", "size": 32, "member": dict(cfg["model"], n_radial_bins=512)
                    if member.kind == "linear" else cfg["model"]}
    cfg["preprocessor"]["output_shape"] = cfg["preprocessor"]["config"]["output_shape"] = [512, 512]
    state = {f"members.{i}.{k}": v for i in range(32) for k, v in obj["state_dict"].items()}
    return _write(tmp_path / "ensemble.pt", {**obj, "config_json": json.dumps(cfg),
                                             "state_dict": state})


@pytest.mark.parametrize("member", [LinearConfig(cluster_size=3),
                                    CNN4dConfig(cluster_size=5, channels=(2, 2))])
def test_ensemble_members_are_checked_before_any_allocation(tmp_path, data, member):
    import time
    import tracemalloc

    path = _hostile_ensemble(tmp_path, data, member)
    assert path.stat().st_size < 2e6
    t0 = time.perf_counter()
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="ensemble.pt.*do not fit") as info:
            load_checkpoint(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50e6, f"{peak / 1e6:.0f} MB allocated before the refusal"
    assert time.perf_counter() - t0 < 10 and "\n" not in str(info.value)


def test_compressed_archive_is_refused(tmp_path, data):
    import zipfile

    config = LinearConfig(cluster_size=3)
    model, pre = _model(config, data)
    good = save_checkpoint(tmp_path / "good.pt", model, config, pre)
    packed = tmp_path / "packed.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as z:
        for i in src.infolist():
            z.writestr(i.filename, src.read(i.filename))
    assert torch.load(packed, weights_only=True)["format"] == ckpt.FORMAT  # torch would read it
    with pytest.raises(CheckpointError, match="packed.pt.*compressed"):
        load_checkpoint(packed)


def test_initial_model_of_another_kind_is_refused(tmp_path, data):
    from napari_4dstem_ml.base_model import initial_model
    from napari_4dstem_ml.models import EnsembleConfig

    cnn = EnsembleConfig(member=CNN4dConfig(cluster_size=5, channels=(2, 2)), size=2)
    model, pre = _model(cnn, data)
    path = save_checkpoint(tmp_path / "cnn.pt", model, cnn, pre)
    with pytest.raises(CheckpointError, match=r"--init .*cnn.pt: it holds an ensemble of 2 "
                                              r"conv4d models, not a linear model"):
        initial_model(path, "linear")
    assert initial_model(path, "conv4d").model_config == cnn
    assert initial_model("scratch", "linear") is None
    assert ckpt.model_kind(initial_model("base", "linear").model_config) == "linear"
    with pytest.raises(CheckpointError, match="--init nothing.pt: no such checkpoint"):
        initial_model("nothing.pt", "linear")
