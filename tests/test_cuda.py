"""CUDA checks: the models, training and inference on a GPU give what they give on the CPU.

Skipped without a CUDA device (CI has none); run on a machine with a GPU. TF32 is switched off
where results are compared with float64 references, so that float32 tolerances apply.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

from test_conv4d import CASES, reference_conv4d  # noqa: E402

from napari_4dstem_ml.models import CNN4dConfig, LinearConfig, build_model  # noqa: E402
from napari_4dstem_ml.models.conv4d import Conv4d  # noqa: E402
from napari_4dstem_ml.predict import predict  # noqa: E402
from napari_4dstem_ml.preprocess import PreprocessConfig  # noqa: E402
from napari_4dstem_ml.training.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from napari_4dstem_ml.training.loop import TrainConfig, run_training  # noqa: E402
from napari_4dstem_ml.training.synthetic import make_synthetic  # noqa: E402


@pytest.fixture
def no_tf32():
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize("cin,cout,k,s,p,spatial", CASES)
@pytest.mark.parametrize("method", ["fold3d", "im2col2d"])
def test_conv4d_on_cuda_matches_reference(no_tf32, cin, cout, k, s, p, spatial, method):
    torch.manual_seed(1)
    layer = Conv4d(cin, cout, k, stride=s, padding=p, bias=True, method=method)
    x = torch.randn(2, cin, *spatial)
    ref = reference_conv4d(x.numpy(), layer.weight.detach().numpy(), layer.bias.detach().numpy(), s, p)
    y = layer.cuda()(x.cuda())
    assert y.is_cuda
    np.testing.assert_allclose(y.detach().cpu().numpy(), ref, rtol=1e-4, atol=1e-5)
    # gradients flow on the GPU and equal the CPU ones
    y.sum().backward()
    g_gpu = layer.weight.grad.detach().cpu().clone()
    layer = layer.cpu()
    layer.weight.grad = None
    layer(x).sum().backward()
    np.testing.assert_allclose(g_gpu.numpy(), layer.weight.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "cfg", [CNN4dConfig(channels=(3, 4)), LinearConfig(cluster_size=5)], ids=["cnn", "linear"]
)
def test_predict_field_on_cuda_equals_cpu(no_tf32, cfg):
    torch.manual_seed(0)
    det = (16, 16)
    model = build_model(cfg, det).eval()
    k = cfg.cluster_size
    tile = torch.from_numpy(
        np.random.default_rng(3).normal(size=(7 + k - 1, 6 + k - 1, *det)).astype(np.float32)
    )
    with torch.no_grad():
        cpu = model.predict_field(tile).numpy()
        gpu = model.cuda().predict_field(tile.cuda()).cpu().numpy()
    assert np.ptp(cpu) > 0
    np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-5)


def test_training_on_cuda_learns_and_checkpoint_moves_to_cpu(tmp_path):
    """Train the CNN on the GPU; its checkpoint loads on the CPU and predicts the same image."""
    syn = make_synthetic(scan_shape=(48, 48), detector_shape=(32, 32), seed=0)
    cfg = TrainConfig(epochs=4, lr=3e-3, batch_size=32, preview_every=0, device="cuda")
    res = run_training(syn.dataset, syn.label, CNN4dConfig(cluster_size=5, channels=(4, 8)),
                       PreprocessConfig(), cfg)
    assert next(res.model.parameters()).is_cuda
    assert res.train_summary.get("device", "").startswith("cuda")
    first = res.history[0]["val_loss"]
    assert res.best_val_loss < first or res.best_epoch == 0
    gpu_img = predict(res.model, res.preprocessor, syn.dataset)
    path = save_checkpoint(tmp_path / "m.pt", res.model, res.model_config, res.preprocessor)
    loaded = load_checkpoint(path, device="cpu")
    assert not next(loaded.model.parameters()).is_cuda
    cpu_img = predict(loaded.model, loaded.preprocessor, syn.dataset)
    r = float(np.corrcoef(cpu_img.ravel(), syn.truth.ravel())[0, 1])
    assert r > 0.8
    # TF32 may be on for the GPU image: agree to float32-with-TF32 accuracy
    np.testing.assert_allclose(cpu_img, gpu_img, rtol=0, atol=2e-3 * float(np.ptp(cpu_img)))
