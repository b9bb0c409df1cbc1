"""The CNN fed one scan row at a time (live): equal to ``predict_field`` on the whole field."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_4dstem_ml.models import CNN4dConfig, build_model  # noqa: E402
from napari_4dstem_ml.models.cnn4d import RowStream, row_stream  # noqa: E402


@pytest.mark.parametrize("cluster,kernel", [(5, 3), (7, 3), (3, 2)])
@pytest.mark.parametrize("blocks", [(1,) * 15, (2, 1, 4, 3, 1, 4), (15,)])
def test_row_stream_equals_predict_field(cluster, kernel, blocks):
    """Rows pushed one by one or in blocks of any size: the same image as the whole field,
    each output row as soon as the rows of its clusters are in."""
    torch.manual_seed(cluster)
    model = build_model(CNN4dConfig(cluster_size=cluster, kernel_scan=kernel), (32, 32)).eval()
    k = model.cluster_size
    field = torch.randn(15, 7 + k - 1, 32, 32)
    with torch.inference_mode():
        ref = model.predict_field(field)
        stream = RowStream(model)
        outs, fed = [], 0
        for n in blocks:
            out = stream.push(field[fed:fed + n])
            fed += n
            assert out.shape[0] == max(0, fed - (k - 1)) - sum(o.shape[0] for o in outs)
            outs.append(out)
    got = torch.cat(outs)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)


def test_a_mirrored_row_stream_equals_the_mirrored_field():
    """The mirrored view (an ensemble's ``mirror_average``), streamed: rows flipped along scan x
    and kx on the way in, output rows flipped back."""
    torch.manual_seed(4)
    model = build_model(CNN4dConfig(cluster_size=5), (32, 32)).eval()
    field = torch.randn(12, 9 + 4, 32, 32)
    with torch.inference_mode():
        ref = model.predict_field(field.flip((1, 3))).flip(1)
        stream = row_stream(model, mirrored=True)
        got = torch.cat([stream.push(field[i:i + 3]) for i in range(0, 12, 3)])
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)


def test_only_cnns_have_a_row_stream():
    from napari_4dstem_ml.models import LinearConfig

    assert row_stream(build_model(LinearConfig(cluster_size=3), (16, 16))) is None
    assert isinstance(row_stream(build_model(CNN4dConfig(), (32, 32))), RowStream)
