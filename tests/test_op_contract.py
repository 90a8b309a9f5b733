"""The op's argument checks and the contract shared by every backend."""
import pytest
import torch

from mixpath.ops import available_backends, backend_status, default_backend, merge_kernels, mixed_depthwise_bn


def args(N=2, C=3, H=5, W=5, kernels=(3, 5), dtype=torch.float32):
    x = torch.randn(N, C, H, W, dtype=dtype)
    ws = [torch.randn(C, 1, k, k, dtype=dtype) for k in kernels]
    return x, ws, torch.ones(C), torch.zeros(C), torch.zeros(C), torch.ones(C)


def call(x, ws, g, b, rm, rv, **kw):
    return mixed_depthwise_bn(x, ws, g, b, rm, rv, backend=kw.pop("backend", "reference"), **kw)


@pytest.mark.parametrize("mutate,match", [
    (lambda a: (a[0][0],) + a[1:], "4-D"),
    (lambda a: (a[0].long(),) + a[1:], "dtype torch.int64"),
    (lambda a: (a[0][:, :0],) + a[1:], "empty"),
    (lambda a: (a[0], []) + a[2:], "non-empty list"),
    (lambda a: (a[0], a[1][0]) + a[2:], "non-empty list"),
    (lambda a: (a[0], [torch.randn(4, 1, 3, 3)]) + a[2:], "match x's 3 channels"),
    (lambda a: (a[0], [torch.randn(3, 1, 4, 4)]) + a[2:], "kernel size 4"),
    (lambda a: (a[0], [torch.randn(3, 1, 11, 11)]) + a[2:], "kernel size 11"),
    (lambda a: (a[0], [torch.randn(3, 1, 3, 5)]) + a[2:], r"\(3, 1, k, k\)"),
    (lambda a: (a[0], [torch.randn(3, 1, 3, 3, dtype=torch.float64)]) + a[2:], "x's dtype"),
    (lambda a: (a[0], [torch.randn(3, 1, 3, 3, device="meta")]) + a[2:], "one device"),
    (lambda a: a[:2] + (torch.ones(4),) + a[3:], r"bn_weight must have shape \(3,\)"),
    (lambda a: a[:5] + (torch.ones(3, dtype=torch.float16),), "float32"),
    (lambda a: a[:4] + (torch.zeros(3, device="meta"),) + a[5:], "one device"),
])
def test_bad_arguments(mutate, match):
    with pytest.raises(ValueError, match=match):
        call(*mutate(args()))


def test_bad_options():
    a = args()
    with pytest.raises(ValueError, match="stride"):
        call(*a, stride=3)
    with pytest.raises(ValueError, match="activation"):
        call(*a, activation="gelu")
    with pytest.raises(ValueError, match="unknown backend 'fastest'"):
        call(*a, backend="fastest")
    with pytest.raises(ValueError, match="not available"):
        call(*a, backend="cuda")
    with pytest.raises(ValueError, match="momentum"):
        call(*a, momentum=1.5)


def test_single_value_per_channel_in_training():
    a = args(N=1, H=1, W=1)
    with pytest.raises(ValueError, match="more than one value per channel"):
        call(*a)
    call(*a, training=False)  # fine in eval
    a = args(N=1, H=2, W=2)
    with pytest.raises(ValueError, match="more than one value"):
        call(*a, stride=2)  # 2x2 with stride 2 leaves one output per channel


def test_merge_kernels_is_exact_and_differentiable():
    C = 4
    ws = [torch.randn(C, 1, k, k, dtype=torch.float64, requires_grad=True) for k in (1, 3, 7)]
    W = merge_kernels(ws)
    assert W.shape == (C, 1, 7, 7)
    x = torch.randn(2, C, 9, 9, dtype=torch.float64)
    conv = torch.nn.functional.conv2d
    separate = sum(conv(x, w, padding=w.shape[-1] // 2, groups=C, stride=2) for w in ws)
    torch.testing.assert_close(conv(x, W, padding=3, groups=C, stride=2), separate)
    W.sum().backward()
    assert all(torch.equal(w.grad, torch.ones_like(w)) for w in ws)  # each path gets its centre crop


def test_running_stats_follow_pytorch():
    x, ws, g, b, rm, rv = args(N=4)
    rm2, rv2 = rm.clone(), rv.clone()
    z = sum(torch.nn.functional.conv2d(x, w, padding=w.shape[-1] // 2, groups=3) for w in ws)
    torch.nn.functional.batch_norm(z, rm2, rv2, g, b, True, 0.3, 1e-5)
    call(x, ws, g, b, rm, rv, momentum=0.3, backend="merged")
    torch.testing.assert_close(rm, rm2)
    torch.testing.assert_close(rv, rv2)


def test_autocast_runs_in_autocast_dtype():
    x, ws, g, b, rm, rv = args()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for backend in available_backends("cpu"):
            if backend != "triton":
                assert call(x, ws, g, b, rm, rv, backend=backend).dtype == torch.bfloat16


def test_backend_listing():
    names = available_backends("cpu")
    assert names[:2] == ["reference", "merged"]
    status = backend_status("cpu")
    assert set(status) == {"reference", "merged", "triton", "cpp", "cuda"}
    assert status["cuda"] != "available"
    assert default_backend("cpu") in names and default_backend("cpu") != "reference"
    # CPU prefers the compiled kernels when they built
    assert default_backend("cpu") == ("cpp" if "cpp" in names else "merged")
