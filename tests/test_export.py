import importlib.util
import json
import random
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import mixpath.export as export
from mixpath import ShadowBatchNorm2d, SuperNet, get_space
from mixpath.export import ExportError, export_subnet, fold_subnet
from mixpath.space import Arch, LayerChoice

TINY = get_space("tiny", num_classes=10, input_size=16)
META = {"arch": "test", "input_size": 16, "num_classes": 10}


def perturb_batchnorms(module: nn.Module, seed=0):
    """Affine parameters and running statistics far from (1, 0, 0, 1), so a missed or wrong fold shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, ShadowBatchNorm2d):
                rows = [m.row(j) for j in range(1, m.num_shadows + 1)]
            elif isinstance(m, nn.BatchNorm2d):
                rows = [(m.weight, m.bias, m.running_mean, m.running_var)]
            else:
                continue
            for weight, bias, mean, var in rows:
                weight.copy_(torch.randn(weight.shape, generator=g) * 0.3 + 1.0)
                bias.copy_(torch.randn(bias.shape, generator=g) * 0.3)
                mean.copy_(torch.randn(mean.shape, generator=g) * 0.3)
                var.copy_(torch.rand(var.shape, generator=g) + 0.5)


def uniform_arch(space, expansion, kernels):
    return Arch(tuple(LayerChoice(expansion, tuple(kernels)) for _ in space.layers))


def make_subnet(space, layout, arch, seed=0):
    torch.manual_seed(seed)
    sub = SuperNet(space, layout=layout).subnet(arch)
    perturb_batchnorms(sub, seed)
    return sub.eval()


ARCHS = {
    "one-path": uniform_arch(TINY, 3, (5,)),
    "several-paths": Arch((LayerChoice(6, (3, 5, 7, 9)), LayerChoice(3, (3, 9)), LayerChoice(3, (7,)),
                           LayerChoice(6, (3, 5, 7)))),
}


@pytest.mark.parametrize("layout", ["mixpath", "official"])
@pytest.mark.parametrize("arch_name", list(ARCHS))
def test_fold_equals_subnet_in_eval(layout, arch_name):
    sub = make_subnet(TINY, layout, ARCHS[arch_name])
    folded = fold_subnet(sub)
    assert all(type(m).__module__.startswith("torch.") for m in folded.modules())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), sub(x))


def test_fold_equals_subnet_cifar_space():
    space = get_space("cifar", num_classes=10, input_size=32)
    sub = make_subnet(space, "mixpath", space.sample(random.Random(3)), seed=1)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fold_subnet(sub)(x), sub(x))


def depthwise_convs(folded):
    return {name: m for name, m in folded.named_modules()
            if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1}


def test_mixpath_layout_merges_paths_into_one_depthwise_conv_per_layer():
    arch = ARCHS["several-paths"]
    convs = depthwise_convs(fold_subnet(make_subnet(TINY, "mixpath", arch)))
    assert len(convs) == len(arch)
    assert sorted(c.kernel_size[0] for c in convs.values()) == sorted(max(c.kernels) for c in arch.layers)


def test_official_layout_keeps_one_depthwise_conv_per_path():
    arch = ARCHS["several-paths"]
    convs = depthwise_convs(fold_subnet(make_subnet(TINY, "official", arch)))
    assert len(convs) == sum(len(c.kernels) for c in arch.layers)


def test_fold_rejects_a_supernet():
    with pytest.raises(ExportError, match="needs a SubNet"):
        fold_subnet(SuperNet(TINY))


LOAD_WITHOUT_MIXPATH = textwrap.dedent("""
    import sys, torch
    program, x, out = sys.argv[1:]
    y = torch.export.load(program).module()(torch.load(x))
    assert "mixpath" not in sys.modules, "loading the export imported mixpath"
    torch.save(y, out)
""")


def test_export_loads_and_runs_in_a_process_without_mixpath(tmp_path):
    sub = make_subnet(TINY, "mixpath", ARCHS["several-paths"])
    path = tmp_path / "model.pt2"
    info = export_subnet(sub, path, torch.randn(1, 3, 16, 16), meta=META)
    assert json.loads(path.with_suffix(".json").read_text()) == info
    assert info["arch"] == "test" and info["torch"] == torch.__version__ and info["dynamic_batch"]
    assert 0 <= info["max_abs_diff"] <= info["tolerance"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.pt2"]

    x = torch.randn(3, 3, 16, 16)  # another batch size than the example: the batch dimension is dynamic
    torch.save(x, tmp_path / "x.pt")
    subprocess.run([sys.executable, "-c", LOAD_WITHOUT_MIXPATH, str(path), str(tmp_path / "x.pt"),
                    str(tmp_path / "y.pt")], check=True, cwd=tmp_path, timeout=120)
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "y.pt"), sub(x))


def test_export_fails_on_a_model_that_disagrees_and_writes_nothing(tmp_path, monkeypatch):
    def corrupted(subnet):
        folded = fold_subnet(subnet)
        with torch.no_grad():
            folded.layer1_project.bias.add_(0.05)
        return folded

    monkeypatch.setattr(export, "fold_subnet", corrupted)
    sub = make_subnet(TINY, "official", ARCHS["one-path"])
    with pytest.raises(ExportError, match=r"differs from the subnet by up to \S+ \(tolerance"):
        export_subnet(sub, tmp_path / "model.pt2", torch.randn(2, 3, 16, 16), meta=META)
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_to_overwrite_unless_forced(tmp_path):
    sub = make_subnet(TINY, "mixpath", ARCHS["one-path"])
    path = tmp_path / "model.pt2"
    path.write_bytes(b"keep me")
    with pytest.raises(ExportError, match="will not overwrite .*model.pt2; .*force=True"):
        export_subnet(sub, path, torch.randn(2, 3, 16, 16), meta=META)
    assert path.read_bytes() == b"keep me"
    export_subnet(sub, path, torch.randn(2, 3, 16, 16), meta=META, force=True)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(path).module()(x), sub(x))


def test_export_onnx_without_the_package_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `onnx` unimportable
    sub = make_subnet(TINY, "mixpath", ARCHS["one-path"])
    with pytest.raises(ExportError, match="--onnx needs the onnx package: pip install onnx"):
        export_subnet(sub, tmp_path / "model.pt2", torch.randn(2, 3, 16, 16), meta=META, onnx=True)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript")),
                    reason="needs onnx and onnxscript")
def test_export_onnx_writes_a_valid_model(tmp_path):
    import onnx

    from onnx.reference import ReferenceEvaluator

    sub = make_subnet(TINY, "mixpath", ARCHS["several-paths"])
    export_subnet(sub, tmp_path / "model.pt2", torch.randn(2, 3, 16, 16), meta=META, onnx=True)
    model = onnx.load(tmp_path / "model.onnx")
    onnx.checker.check_model(model, full_check=True)
    x = torch.randn(3, 3, 16, 16)
    (y,) = ReferenceEvaluator(model).run(None, {model.graph.input[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(y), sub(x))
