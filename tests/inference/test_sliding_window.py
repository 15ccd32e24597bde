import numpy as np
import pytest
import torch
from torch import nn

from autounet.inference import memory
from autounet.inference.sliding_window import compute_steps, mirror_subsets, sliding_window_logits


def test_compute_steps_by_hand():
    assert compute_steps([10], [4], 0.5) == [[0, 2, 4, 6]]
    # 11 - 4 = 7 over ceil(7 / 2) = 4 intervals of 1.75 -> 0, 1.75, 3.5, 5.25, 7 rounded
    assert compute_steps([11], [4], 0.5) == [[0, 2, 4, 5, 7]]
    assert compute_steps([10], [4], 1.0) == [[0, 3, 6]]
    assert compute_steps([4, 3], [4, 4], 0.5) == [[0], [0]]
    assert compute_steps([7, 5, 9], [4, 5, 2], 0.5) == [[0, 2, 3], [0], [0, 1, 2, 3, 4, 5, 6, 7]]


def test_compute_steps_rejects_bad_input():
    with pytest.raises(ValueError):
        compute_steps([10], [4], 0.0)
    with pytest.raises(ValueError):
        compute_steps([10, 10], [4], 0.5)


def test_mirror_subsets():
    assert mirror_subsets([]) == [()]
    assert mirror_subsets([2, 0]) == [(), (0,), (2,), (0, 2)]
    assert len(mirror_subsets([0, 1, 2])) == 8


def _pointwise(in_ch: int, out_ch: int, dims: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return (nn.Conv3d if dims == 3 else nn.Conv2d)(in_ch, out_ch, 1)


def _direct(net: nn.Module, data: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return net(torch.from_numpy(data)[None])[0]


@pytest.mark.parametrize("shape", [(2, 3, 5, 2), (2, 11, 9, 7)])
def test_pointwise_network_matches_direct_forward(shape):
    """Image smaller than the patch, and an odd shape needing several uneven tiles."""
    rng = np.random.default_rng(0)
    data = rng.normal(size=shape).astype(np.float32)
    net = _pointwise(2, 3)
    out = sliding_window_logits(net, data, [4, 4, 4], num_classes=3, device="cpu", precision="fp32")
    assert out.shape == (3, *shape[1:]) and out.dtype == torch.float32
    torch.testing.assert_close(out, _direct(net, data), rtol=1e-5, atol=1e-5)


def test_smaller_than_patch_equals_zero_padded_convolution():
    """One tile, centred in zero padding: a 3x3x3 conv sees the same zeros as its own padding."""
    rng = np.random.default_rng(1)
    data = rng.normal(size=(1, 3, 5, 4)).astype(np.float32)
    torch.manual_seed(0)
    net = nn.Conv3d(1, 2, 3, padding=1)
    out = sliding_window_logits(net, data, [6, 8, 6], num_classes=2, device="cpu", precision="fp32")
    torch.testing.assert_close(out, _direct(net, data), rtol=1e-5, atol=1e-5)


def test_2d_network_on_3d_data_predicts_each_slice():
    rng = np.random.default_rng(2)
    data = rng.normal(size=(1, 3, 7, 5)).astype(np.float32)
    net = _pointwise(1, 2, dims=2)
    out = sliding_window_logits(net, data, [4, 4], num_classes=2, device="cpu", precision="fp32", mirror_axes=(0, 1))
    with torch.no_grad():
        expected = torch.stack([net(torch.from_numpy(data[:, z])[None])[0] for z in range(3)], dim=1)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def _symmetric_conv() -> nn.Module:
    conv = nn.Conv3d(1, 2, 3, padding=1)
    with torch.no_grad():
        w = torch.randn(2, 1, 3, 3, 3, generator=torch.Generator().manual_seed(3))
        w = (w + w.flip(2)) / 2
        w = (w + w.flip(3)) / 2
        w = (w + w.flip(4)) / 2
        conv.weight.copy_(w)
    return conv


def test_mirroring_is_identity_for_flip_equivariant_network():
    data = np.random.default_rng(4).normal(size=(1, 9, 10, 7)).astype(np.float32)
    net = _symmetric_conv()
    plain = sliding_window_logits(net, data, [6, 6, 6], 2, device="cpu", precision="fp32", mirror_axes=())
    mirrored = sliding_window_logits(net, data, [6, 6, 6], 2, device="cpu", precision="fp32", mirror_axes=(0, 1, 2))
    torch.testing.assert_close(mirrored, plain, rtol=1e-5, atol=1e-5)


def test_mirroring_changes_asymmetric_network():
    """Guard: the TTA path really flips (an asymmetric kernel is not flip-equivariant)."""
    data = np.random.default_rng(5).normal(size=(1, 8, 8, 8)).astype(np.float32)
    torch.manual_seed(0)
    net = nn.Conv3d(1, 2, 3, padding=1)
    plain = sliding_window_logits(net, data, [8, 8, 8], 2, device="cpu", precision="fp32")
    mirrored = sliding_window_logits(net, data, [8, 8, 8], 2, device="cpu", precision="fp32", mirror_axes=(0,))
    assert not torch.allclose(plain, mirrored, atol=1e-3)
    with torch.no_grad():
        x = torch.from_numpy(data)[None]
        expected = (net(x) + net(x.flip(2)).flip(2))[0] / 2
    torch.testing.assert_close(mirrored, expected, rtol=1e-5, atol=1e-5)


class _Constant(nn.Module):
    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.values = torch.tensor(values)
        self.deep_supervision = True

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.values.reshape(1, -1, 1, 1, 1).expand(x.shape[0], -1, *x.shape[2:]).clone()
        # a deep-supervision list when the flag is on, like our networks
        return [out, out[:, :, ::2, ::2, ::2]] if self.deep_supervision else out


def test_fold_ensemble_averages_logits():
    data = np.zeros((1, 9, 6, 5), dtype=np.float32)
    folds = [_Constant([1.0, -3.0]), _Constant([5.0, 1.0])]
    out = sliding_window_logits(folds, data, [4, 4, 4], 2, device="cpu", precision="fp32", mirror_axes=(0, 2))
    assert all(not f.deep_supervision for f in folds)
    torch.testing.assert_close(out[0], torch.full((9, 6, 5), 3.0))
    torch.testing.assert_close(out[1], torch.full((9, 6, 5), -1.0))


def test_half_precision_accumulation_close_to_full(monkeypatch):
    data = np.random.default_rng(6).normal(size=(2, 11, 9, 7)).astype(np.float32)
    net = _pointwise(2, 3)
    full = sliding_window_logits(net, data, [4, 4, 4], 3, device="cpu", precision="fp32")
    monkeypatch.setattr(memory, "HALF_PRECISION_THRESHOLD_ELEMENTS", 10)
    half = sliding_window_logits(net, data, [4, 4, 4], 3, device="cpu", precision="fp32", accumulate_on="cpu")
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, rtol=1e-2, atol=1e-2)


def test_bf16_autocast_close_to_fp32_and_same_labels():
    """bf16 autocast (the CPU default where the CPU has bf16 instructions) changes logits only in
    their third significant digit, so the argmax of logits with clear margins is unchanged."""
    data = np.random.default_rng(7).normal(size=(2, 11, 9, 7)).astype(np.float32)
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv3d(2, 8, 3, padding=1), nn.LeakyReLU(0.01), nn.Conv3d(8, 3, 3, padding=1))
    full = sliding_window_logits(net, data, [4, 6, 4], 3, device="cpu", precision="fp32", mirror_axes=(0, 1))
    low = sliding_window_logits(net, data, [4, 6, 4], 3, device="cpu", precision="bf16", mirror_axes=(0, 1))
    assert low.dtype == torch.float32
    assert not torch.equal(low, full)  # the network really ran in bf16
    scale = float(full.abs().max())
    torch.testing.assert_close(low, full, rtol=0.0, atol=0.02 * scale)
    top2 = full.topk(2, dim=0).values
    clear = (top2[0] - top2[1]) > 0.05 * scale
    assert clear.float().mean() > 0.5
    assert torch.equal(low.argmax(0)[clear], full.argmax(0)[clear])


def test_precision_that_cannot_run_is_an_error():
    from autounet.errors import AutounetError

    data = np.zeros((2, 4, 4, 4), dtype=np.float32)
    with pytest.raises(AutounetError, match="fp16 needs a CUDA device"):
        sliding_window_logits(_pointwise(2, 3), data, [4, 4, 4], 3, device="cpu", precision="fp16")


def test_wrong_class_count_and_bad_arguments():
    data = np.zeros((2, 4, 4, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="channels"):
        sliding_window_logits(_pointwise(2, 3), data, [4, 4, 4], 2, device="cpu")
    with pytest.raises(ValueError, match="mirror"):
        sliding_window_logits(_pointwise(2, 3), data, [4, 4, 4], 3, device="cpu", mirror_axes=(3,))
    with pytest.raises(ValueError, match="accumulate_on"):
        sliding_window_logits(_pointwise(2, 3), data, [4, 4, 4], 3, device="cpu", accumulate_on="gpu")


def test_memory_estimate_counts_buffers():
    est = memory.estimate_prediction_memory_bytes((10, 20, 30), 3, (16, 16, 16), in_channels=2)
    voxels = 16 * 20 * 30  # axis 0 padded to the patch
    assert est.accumulators == voxels * 4 * 4
    assert est.data == voxels * 2 * 4
    assert est.result == voxels * 3 * 4
    assert est.total == est.accumulators + est.data + est.network + est.result


def test_cpu_batches_mirrored_views_only_while_their_activations_are_small():
    """Batching the views changes the speed, never the result; a large patch stays view by view."""
    from autounet.inference.sliding_window import _views_fit_cpu
    from autounet.networks.description import NetworkPlan
    from autounet.networks.registry import build_network

    torch.manual_seed(0)
    plan = NetworkPlan("plain_unet", [4, 8], [[3, 3, 3]] * 2, [[1, 1, 1], [2, 2, 2]], [1, 1], [1])
    net = build_network("plain_unet", plan, 1, 3, deep_supervision=False).eval()
    assert _views_fit_cpu(net, [8, 16, 16], 8)
    assert not _views_fit_cpu(net, [512, 512, 512], 8)  # 8 x ~7 GiB of activations
    data = np.random.default_rng(0).normal(size=(1, 10, 20, 18)).astype(np.float32)
    batched = sliding_window_logits(net, data, [8, 16, 16], 3, mirror_axes=[0, 1, 2], device="cpu", precision="fp32")
    one_by_one = sliding_window_logits(net, data, [8, 16, 16], 3, mirror_axes=[0, 1, 2], device="cpu",
                                       precision="fp32", max_forward_batch=1)
    assert torch.allclose(batched, one_by_one, atol=1e-5)
