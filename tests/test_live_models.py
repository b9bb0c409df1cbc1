"""The live pipeline's models against the offline pipeline on the same data: rows arriving in
blocks of any size give the same image — the CNN through its row stream, the linear model as
virtual images of its raw-detector readout (float data with negatives clipped on the way)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_4dstem_ml.dataset import Dataset4D  # noqa: E402
from napari_4dstem_ml.live import LivePipeline  # noqa: E402
from napari_4dstem_ml.models import CNN4dConfig, EnsembleConfig, LinearConfig, build_model  # noqa: E402
from napari_4dstem_ml.predict.local import model_pass  # noqa: E402
from napari_4dstem_ml.preprocess import PreprocessConfig, Preprocessor  # noqa: E402


def _drain(gen):
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


@pytest.mark.parametrize("kind", ["cnn", "linear", "mirrored ensemble"])
def test_live_rows_in_blocks_equal_offline(synthetic, kind):
    base = np.asarray(synthetic.dataset.data, np.float32)
    noisy = base + np.random.default_rng(3).normal(0, 0.5, base.shape).astype(np.float32)
    ds = Dataset4D(noisy, synthetic.dataset.calibration)
    pre = Preprocessor.fit(ds, PreprocessConfig(max_angle=20.0, output_shape=(16, 16),
                                                compression="none" if kind == "linear" else "power"))
    pre = pre.with_label_stats(0.5, 2.0)
    torch.manual_seed(0)
    cfg = {"cnn": CNN4dConfig(channels=(3, 3)),
           "linear": LinearConfig(cluster_size=3, mask_init="random"),
           "mirrored ensemble": EnsembleConfig(CNN4dConfig(channels=(3, 3)), size=2)}[kind]
    model = build_model(cfg, pre.output_shape).eval()
    pipe = LivePipeline(ds.scan_shape, ds.detector_shape, model=model, preprocessor=pre,
                        calibration=ds.calibration)
    lm = pipe.models["model"]
    ny = ds.scan_shape[0]
    y = 0
    for n in [1, 3, 2, 5, 1, 4, 30]:
        if y >= ny:
            break
        block = noisy[y:min(ny, y + n)]
        pipe.process(y, y + len(block), block)
        y += len(block)
        assert pipe.rows_done["model"] <= y
    # offline, with the data-set values live fitted on its first block of rows
    ref = _drain(model_pass(model, lm.pre, ds)).image
    assert (lm.streams is not None) == (kind != "linear")
    if kind == "mirrored ensemble":  # two members, each also on the mirrored rows
        assert model.mirror_average and len(lm.streams) == 4
    assert (lm.readout is not None) == (kind == "linear")
    np.testing.assert_allclose(pipe.images["model"], ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
