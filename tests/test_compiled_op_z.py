"""The z-keeping pair of ops (CUDA only) exercised on CPU: compiled_op.register(..., keeps_z=True)'s autograd and
fake kernels over Python reference implementations, the CUDA backend's choice of pair, and z in activation memory."""
import pytest
import torch
import torch.nn.functional as F

from benchmarks.timing import activation_bytes
from mixpath.ops import compiled_op, extension_backend

NS = "mixpath_ztest"
_lib = torch.library.Library(NS, "DEF")
for name, schema in [("forward", compiled_op.FORWARD_SCHEMA), ("backward", compiled_op.BACKWARD_SCHEMA),
                     ("forward_z", compiled_op.FORWARD_Z_SCHEMA), ("backward_z", compiled_op.BACKWARD_Z_SCHEMA)]:
    _lib.define(name + schema)


def _conv(x, weight, stride):
    K = weight.shape[-1]
    return F.conv2d(x, weight[:, None].to(x.dtype), padding=K // 2, stride=stride, groups=x.shape[1])


def _forward(x, weight, gamma, beta, running_mean, running_var, stride, training, eps, activation):
    y, mean, var, _ = _forward_z(x, weight, gamma, beta, running_mean, running_var, stride, training, eps, activation)
    return y, mean, var


def _forward_z(x, weight, gamma, beta, running_mean, running_var, stride, training, eps, activation):
    assert activation == "none" and training
    z = _conv(x, weight, stride)
    mean, var = z.mean((0, 2, 3)), z.var((0, 2, 3), unbiased=False)
    y = (z - mean[:, None, None]) * torch.rsqrt(var + eps)[:, None, None] * gamma[:, None, None] + beta[:, None, None]
    return y, mean.to(gamma.dtype), var.to(gamma.dtype), z.float()  # z float32, as the CUDA kernels keep it


def _backward(dy, x, weight, gamma, beta, mean, var, stride, training, eps, activation):
    return _backward_z(dy, x, _conv(x, weight, stride).float(), weight, gamma, beta, mean, var, stride, training,
                       eps, activation)


def _backward_z(dy, x, z, weight, gamma, beta, mean, var, stride, training, eps, activation):
    """BatchNorm's backward from the given z, then the conv's: no recomputation of z."""
    c = (slice(None), None, None)
    inv = torch.rsqrt(var + eps)
    xh = (z.to(x.dtype) - mean[c]) * inv[c]
    dbeta, dgamma = dy.sum((0, 2, 3)), (dy * xh).sum((0, 2, 3))
    count = dy.numel() // dy.shape[1]
    dz = gamma[c] * inv[c] * (dy - dbeta[c] / count - xh * dgamma[c] / count)
    w4, K = weight[:, None].to(x.dtype), weight.shape[-1]
    dx = torch.nn.grad.conv2d_input(x.shape, w4, dz, stride=stride, padding=K // 2, groups=x.shape[1])
    dw = torch.nn.grad.conv2d_weight(x, w4.shape, dz, stride=stride, padding=K // 2, groups=x.shape[1])
    return dx, dw[:, 0].to(weight.dtype), dgamma, dbeta


for _name, _fn in [("forward", _forward), ("backward", _backward), ("forward_z", _forward_z),
                   ("backward_z", _backward_z)]:
    _lib.impl(_name, _fn, "CPU")
compiled_op.register(f"{NS}::forward", f"{NS}::backward")
compiled_op.register(f"{NS}::forward_z", f"{NS}::backward_z", keeps_z=True)
OPS = getattr(torch.ops, NS)


def _inputs(dtype, N=2, C=3, H=7, W=6, K=5):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, C, H, W, dtype=dtype, generator=g, requires_grad=True)
    weight = (torch.randn(C, K, K, dtype=dtype, generator=g) / K).requires_grad_()
    gamma = (1 + 0.1 * torch.randn(C, dtype=dtype, generator=g)).requires_grad_()
    beta = (0.1 * torch.randn(C, dtype=dtype, generator=g)).requires_grad_()
    return x, weight, gamma, beta, torch.zeros(C, dtype=dtype), torch.ones(C, dtype=dtype)


@pytest.mark.parametrize("stride", [1, 2])
def test_z_pair_autograd_is_exact(stride):
    """register's autograd hands the forward's z to backward_z: float64 gradcheck (z is float32, hence the atol)."""
    x, weight, gamma, beta, rm, rv = _inputs(torch.float64)

    def y_of(x, weight, gamma, beta):
        return OPS.forward_z(x, weight, gamma, beta, rm, rv, stride, True, 1e-5, "none")[0]

    assert torch.autograd.gradcheck(y_of, (x, weight, gamma, beta), atol=1e-4)


@pytest.mark.parametrize("stride", [1, 2])
def test_z_pair_gradients_match_the_plain_pair(stride):
    x, weight, gamma, beta, rm, rv = _inputs(torch.float32)
    leaves = (x, weight, gamma, beta)
    dy = torch.randn(OPS.forward(x, weight, gamma, beta, rm, rv, stride, True, 1e-5, "none")[0].shape)
    grads = [torch.autograd.grad(op(x, weight, gamma, beta, rm, rv, stride, True, 1e-5, "none")[0], leaves, dy)
             for op in (OPS.forward, OPS.forward_z)]
    for plain, kept in zip(*grads):
        torch.testing.assert_close(kept, plain)


def test_z_pair_opcheck():
    """Schema, fake kernels (torch.compile), autograd registration of the z pair."""
    x, weight, gamma, beta, rm, rv = _inputs(torch.float32)
    torch.library.opcheck(OPS.forward_z.default, (x, weight, gamma, beta, rm, rv, 2, True, 1e-5, "none"))
    y, mean, var, z = OPS.forward_z(x, weight, gamma, beta, rm, rv, 2, True, 1e-5, "none")
    assert z.dtype == torch.float32 and z.shape == y.shape
    torch.library.opcheck(OPS.backward_z.default, (torch.randn_like(y), x.detach(), z, weight.detach(),
                                                   gamma.detach(), beta.detach(), mean, var, 2, True, 1e-5, "none"))


def test_activation_memory_counts_z():
    """The harness's activation memory comes from the saved tensors: the z pair's is larger by z exactly."""
    x, weight, gamma, beta, rm, rv = _inputs(torch.float32)
    kept = {}
    for name, op in [("plain", OPS.forward.default), ("z", OPS.forward_z.default)]:
        def step(op=op):
            return compiled_op.run_compiled(op, x, [weight[:, None]], gamma, beta, rm.clone(), rv.clone(), stride=1,
                                            training=True, momentum=0.1, eps=1e-5, activation="none")
        kept[name] = activation_bytes(step, [x, weight, gamma, beta, rm, rv])
    assert kept["z"] - kept["plain"] == x.shape[0] * x.shape[1] * x.shape[2] * x.shape[3] * 4


def test_cuda_backend_keeps_z_for_large_kernels_in_training(monkeypatch):
    extension_backend._store_z_setting.cache_clear()
    try:
        assert extension_backend.keeps_z("cuda", extension_backend.STORE_Z_MIN_K, True)
        assert not extension_backend.keeps_z("cuda", extension_backend.STORE_Z_MIN_K - 2, True)
        assert not extension_backend.keeps_z("cuda", 9, False)
        assert not extension_backend.keeps_z("cpu", 9, True)
        for value, small, large in [("1", True, True), ("0", False, False)]:
            monkeypatch.setenv("MIXPATH_CUDA_STORE_Z", value)
            extension_backend._store_z_setting.cache_clear()
            assert (extension_backend.keeps_z("cuda", 3, True), extension_backend.keeps_z("cuda", 9, True)) == (small,
                                                                                                                large)
        monkeypatch.setenv("MIXPATH_CUDA_STORE_Z", "yes")
        extension_backend._store_z_setting.cache_clear()
        with pytest.raises(ValueError, match="MIXPATH_CUDA_STORE_Z must be auto, 0 or 1"):
            extension_backend.keeps_z("cuda", 9, True)
    finally:
        monkeypatch.delenv("MIXPATH_CUDA_STORE_Z", raising=False)
        extension_backend._store_z_setting.cache_clear()


@pytest.mark.skipif(extension_backend.missing("cpu") is not None, reason="mixpath._C did not build")
def test_extension_declares_the_z_schemas():
    for name, schema in [("fused_dwconv_bn_forward_z", compiled_op.FORWARD_Z_SCHEMA),
                         ("fused_dwconv_bn_backward_z", compiled_op.BACKWARD_Z_SCHEMA)]:
        assert str(getattr(torch.ops.mixpath, name).default._schema) == f"mixpath::{name}{schema}"
