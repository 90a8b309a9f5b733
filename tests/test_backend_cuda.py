"""CUDA-specific checks of the `cuda` backend (csrc/cuda/), beyond the shared matrix in test_backends.py.

The kernel build check (nvcc_check.sh) runs wherever nvcc is installed; the
rest needs a GPU and a build of mixpath._C with CUDA kernels, and skips otherwise.
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from mixpath.ops import available_backends, backend_status, mixed_depthwise_bn
from mixpath.ops.testing import OpCase, assert_backend_matches, make_inputs

ROOT = Path(__file__).resolve().parents[1]
NVCC = os.environ.get("NVCC", "nvcc")


def _cuda_reason():
    if not torch.cuda.is_available():
        return "no CUDA device"
    if "cuda" not in available_backends("cuda"):
        return f"cuda backend unavailable: {backend_status('cuda')['cuda']}"
    return None


needs_cuda = pytest.mark.skipif(_cuda_reason() is not None, reason=str(_cuda_reason()))

# The layers of the target networks (C, H = W), at a smaller batch than the benchmark's 256.
TARGET_LAYERS = [(192, 32), (288, 16), (576, 8), (240, 28), (480, 14), (1152, 7)]


@pytest.mark.skipif(shutil.which(NVCC) is None, reason="nvcc not found")
def test_nvcc_check_passes():
    """Every .cu compiles for sm_80 and sm_90 without warnings or register spills."""
    proc = subprocess.run(["bash", str(ROOT / "csrc" / "cuda" / "nvcc_check.sh")], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "no spills" in proc.stdout


def _run(inputs, case, backend="cuda"):
    """Forward + backward; returns y, the running stats and all gradients (on the device)."""
    leaves = {"x": inputs["x"], "g": inputs["bn_weight"], "b": inputs["bn_bias"]}
    leaves.update({f"w{i}": w for i, w in enumerate(inputs["weights"])})
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in leaves.items()}
    rm, rv = inputs["running_mean"].clone(), inputs["running_var"].clone()
    y = mixed_depthwise_bn(leaves["x"], [leaves[f"w{i}"] for i in range(len(case.kernels))], leaves["g"], leaves["b"],
                           rm, rv, stride=case.stride, training=case.training, eps=case.eps,
                           activation=case.activation, backend=backend)
    y.backward(inputs["dy"])
    return [y.detach(), rm, rv] + [v.grad for v in leaves.values()]


@needs_cuda
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("stride", [1, 2])
def test_bit_identical_across_runs(channels_last, dtype, stride):
    """No float atomics: two runs give the same bits (outputs, gradients, running stats)."""
    case = OpCase(16, 96, 28, 28, kernels=(3, 5, 7, 9), stride=stride, dtype=dtype, channels_last=channels_last)
    inputs = make_inputs(case, "cuda", seed=3)
    first, second = _run(inputs, case), _run(inputs, case)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


LAYER_IDS = [f"C{c}H{h}" for c, h in TARGET_LAYERS]
VARIANTS = [((3, 5, 7, 9), torch.bfloat16, False), ((3, 5, 7, 9), torch.float32, True),
            ((3, 5), torch.float32, False), ((3,), torch.bfloat16, True)]


@needs_cuda
@pytest.mark.parametrize("C,H", TARGET_LAYERS, ids=LAYER_IDS)
@pytest.mark.parametrize("kernels,dtype,channels_last", VARIANTS,
                         ids=["k3579-bf16-nchw", "k3579-f32-cl", "k35-f32-nchw", "k3-bf16-cl"])
def test_target_layers_match_reference(C, H, kernels, dtype, channels_last):
    """The benchmark's layer shapes (batch 8) against the float64 reference."""
    assert_backend_matches("cuda", OpCase(8, C, H, H, kernels=kernels, dtype=dtype, channels_last=channels_last),
                           device="cuda")


@pytest.mark.slow
@needs_cuda
@pytest.mark.parametrize("C,H", TARGET_LAYERS, ids=LAYER_IDS)
@pytest.mark.parametrize("kernels", [(3, 5, 7, 9), (5, 7), (3, 5), (3,), (9,)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_target_layers_sweep(C, H, kernels, dtype, stride, channels_last):
    assert_backend_matches("cuda", OpCase(8, C, H, H, kernels=kernels, stride=stride, dtype=dtype,
                                          channels_last=channels_last), device="cuda")


@needs_cuda
@pytest.mark.parametrize("case", [
    OpCase(8, 192, 32, 32, kernels=(3, 5, 7, 9), stride=2, dtype=torch.bfloat16),
    OpCase(8, 240, 28, 28, kernels=(5, 9), stride=2, channels_last=True),
    OpCase(4, 96, 112, 112, kernels=(3, 5), dtype=torch.float16),                 # planes too large for one tile
    OpCase(2, 40, 150, 130, kernels=(3, 7), stride=2, channels_last=True),
    OpCase(1, 64, 14, 14, kernels=(3, 9), training=False, dtype=torch.bfloat16),  # eval, N = 1
    OpCase(16, 6, 5, 5, kernels=(1,), activation="relu"),                         # 1 x 1 only
    OpCase(4, 30, 9, 9, kernels=(3, 5, 7, 9), channels_last=True),                # C not a multiple of 4
], ids=str)
def test_other_shapes_match_reference(case):
    assert_backend_matches("cuda", case, device="cuda")


@needs_cuda
def test_large_mean_offset():
    """Batch statistics stay accurate when the mean dwarfs the spread (shifted sums, Chan merges)."""
    case = OpCase(8, 32, 16, 16, kernels=(3, 5))
    inputs = make_inputs(case, "cuda", seed=5)
    inputs["x"] = inputs["x"] + 200.0
    got = _run(inputs, case)
    ref = _run({k: (v.double() if torch.is_tensor(v) else [w.double() for w in v]) for k, v in inputs.items()},
               case, backend="reference")
    y, ref_y = got[0].double(), ref[0]
    assert (y - ref_y).norm() / ref_y.norm() < 1e-4
    for a, b in zip(got[1:3], ref[1:3]):  # running mean and variance
        assert torch.allclose(a.double(), b, rtol=1e-4, atol=1e-4)


@needs_cuda
@pytest.mark.parametrize("channels_last", [False, True])
def test_unaligned_storage(channels_last):
    """Views that start off a 16-byte boundary take the scalar paths and give the same bits."""
    case = OpCase(4, 24, 15, 15, kernels=(3, 5), dtype=torch.bfloat16, channels_last=channels_last)
    inputs = make_inputs(case, "cuda", seed=7)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = inputs["x"]
    base = torch.empty(x.numel() + 1, dtype=x.dtype, device=x.device)
    if channels_last:
        shifted = base[1:].view(x.shape[0], x.shape[2], x.shape[3], x.shape[1]).permute(0, 3, 1, 2)
    else:
        shifted = base[1:].view(x.shape)
    shifted.copy_(x)
    assert shifted.is_contiguous(memory_format=fmt) and shifted.data_ptr() % 16 != 0
    K = 5
    W = torch.randn(x.shape[1], K, K, device="cuda")
    args = (W, inputs["bn_weight"], inputs["bn_bias"], inputs["running_mean"], inputs["running_var"], 1, True, 1e-5,
            "relu6")
    op = torch.ops.mixpath.fused_dwconv_bn_forward
    for a, b in zip(op(x, *args), op(shifted, *args)):
        assert torch.equal(a, b)
