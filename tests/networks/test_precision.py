import pytest
import torch

from autounet.errors import AutounetError
from autounet.networks.precision import (
    PRECISIONS,
    autocast,
    cpu_flags,
    needs_grad_scaler,
    resolve_precision,
)

CPU = torch.device("cpu")
CUDA = torch.device("cuda")
MPS = torch.device("mps")


def test_auto_follows_the_device_and_the_cpu_features():
    assert resolve_precision("auto", CUDA, native_cpu_bf16=False) == "fp16"
    assert resolve_precision("auto", CPU, native_cpu_bf16=True) == "bf16"
    assert resolve_precision("auto", CPU, native_cpu_bf16=False) == "fp32"
    assert resolve_precision("auto", MPS, native_cpu_bf16=True) == "fp32"


def test_explicit_choices_are_kept_or_rejected_with_the_option_named():
    assert resolve_precision("fp32", CUDA, native_cpu_bf16=True) == "fp32"
    # bf16 on a CPU without native support is slow but correct: allowed when asked for
    assert resolve_precision("bf16", CPU, native_cpu_bf16=False) == "bf16"
    with pytest.raises(AutounetError, match="--precision fp16 needs a CUDA device"):
        resolve_precision("fp16", CPU)
    with pytest.raises(AutounetError, match="--precision bf16 is not supported on mps"):
        resolve_precision("bf16", MPS)
    with pytest.raises(AutounetError, match="--precision must be one of"):
        resolve_precision("fp8", CPU)
    assert set(PRECISIONS) == {"auto", "fp32", "bf16", "fp16"}


def test_cpu_flags_parsed_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx512f avx512_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu sse2 avx512f avx512_bf16\n")
    assert cpu_flags(info) == frozenset({"fpu", "sse2", "avx512f", "avx512_bf16"})
    assert cpu_flags(tmp_path / "absent") == frozenset()


def test_autocast_runs_convolutions_in_the_chosen_dtype_only():
    conv = torch.nn.Conv3d(1, 2, 3)
    x = torch.randn(1, 1, 5, 5, 5)
    with autocast("fp32", CPU):
        assert conv(x).dtype == torch.float32
    with autocast("bf16", CPU):
        assert conv(x).dtype == torch.bfloat16
    assert conv.weight.dtype == torch.float32  # weights stay fp32 (mixed precision)


def test_only_fp16_needs_a_gradient_scaler():
    assert needs_grad_scaler("fp16")
    assert not needs_grad_scaler("bf16")
    assert not needs_grad_scaler("fp32")
