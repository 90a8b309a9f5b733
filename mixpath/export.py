"""A subnet as a standalone inference model: BatchNorms folded, paths merged, saved with torch.export.

`fold_subnet` rebuilds a SubNet as a torch.fx.GraphModule of plain torch.nn
modules (Conv2d with bias, ReLU6, Linear) and functional ops, so the saved
program has no mixpath class or custom op in it and loads in a process that
never imports mixpath. Folding is done in float64 and cast to float32 once, so
the folded model differs from the subnet only by float32 rounding.
"""
from __future__ import annotations

import importlib.util
import operator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from .checkpoint import atomic_path, write_json
from .nn import ConvBNAct, InvertedResidual, SubNet
from .nn.blocks import shadow_row
from .ops.contract import merge_kernels

# Output mismatch allowed, relative to the largest |logit| of the subnet (floor 1): float32 rounding
# (eps 1.2e-7) grows with the fan-in and depth of the network; the fold, the path merge and the
# backends' summation order each change it. Measured on tiny and cifar subnets with perturbed BNs:
# at most 5e-7 of the largest |logit|, so 1e-4 leaves 200x headroom, while a real folding mistake
# (wrong BN row, padding, eps, missing residual) shifts logits by a sizeable fraction of their scale.
RELATIVE_TOLERANCE = 1e-4

_ACTIVATIONS = {"relu6": nn.ReLU6, "relu": nn.ReLU, "none": None}


class ExportError(ValueError):
    """An export that cannot be done or whose result does not match the subnet."""


def _folded_conv(weight: Tensor, stride, groups: int, gamma: Tensor, beta: Tensor, mean: Tensor, var: Tensor,
                 eps: float) -> nn.Conv2d:
    """A centred-padding conv with bias: W * gamma / sd and beta - mean * gamma / sd, computed in float64."""
    f64 = lambda t: t.detach().to(torch.float64)  # noqa: E731
    scale = f64(gamma) / torch.sqrt(f64(var) + eps)
    cout, cin_per_group, kernel = weight.shape[0], weight.shape[1], weight.shape[-1]
    out = nn.Conv2d(cin_per_group * groups, cout, kernel, stride, kernel // 2, groups=groups, bias=True,
                    device=weight.device)
    with torch.no_grad():
        out.weight.copy_((f64(weight) * scale[:, None, None, None]).float())
        out.bias.copy_((f64(beta) - f64(mean) * scale).float())
    return out


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    if bn.running_mean is None or not bn.affine:
        raise ExportError("only BatchNorms with running statistics and affine parameters can be folded")
    return _folded_conv(conv.weight, conv.stride, conv.groups, bn.weight, bn.bias, bn.running_mean,
                        bn.running_var, bn.eps)


def _with_activation(conv: nn.Conv2d, activation: str) -> nn.Module:
    act = _ACTIVATIONS[activation]
    return conv if act is None else nn.Sequential(conv, act())


def _fold_conv_bn_act(block: ConvBNAct) -> nn.Module:
    """ConvBNAct -> Conv2d with bias (+ ReLU6 when the block has it)."""
    return _with_activation(_fold_bn(block[0], block[1]), "relu6" if len(block) > 2 else "none")


def _fold_block(block: InvertedResidual) -> dict[str, nn.Module]:
    """The folded parts of one block: 'expand', 'depthwise' (mixpath) or 'path_k*' (official), 'project'."""
    kernels = block.kernel_sizes
    j = shadow_row(block.shadow_bn, kernels)
    parts = {"expand": _fold_conv_bn_act(block.expand)}
    if block.layout == "mixpath":
        mixed = block.mixed
        merged = merge_kernels([mixed.weight[f"k{k}"] for k in kernels], torch.float64)
        conv = _folded_conv(merged, mixed.stride, mixed.channels, *mixed.bn.row(j), mixed.bn.eps)
        parts["depthwise"] = _with_activation(conv, mixed.activation)
        parts["project"] = _fold_bn(block.project, block.project_bn)
    else:
        parts.update({f"path_k{k}": _fold_conv_bn_act(block.mixed.paths[f"k{k}"]) for k in kernels})
        bn = block.project_bn
        parts["project"] = _folded_conv(block.project.weight, block.project.stride, block.project.groups,
                                        *bn.row(j), bn.eps)
    return parts


def fold_subnet(subnet: SubNet) -> fx.GraphModule:
    """A plain-torch float32 eval-mode network equal to `subnet.eval()(x)` up to float32 rounding.

    Every BatchNorm is folded into the conv before it; in the `mixpath` layout
    each layer's paths are one depthwise conv (centre-padded kernels summed).
    """
    if not isinstance(subnet, SubNet):
        raise ExportError(f"fold_subnet needs a SubNet (SuperNet.subnet(arch)); got {type(subnet).__name__}")
    root, graph = nn.Module(), fx.Graph()

    def call(name: str, module: nn.Module, value: fx.Node) -> fx.Node:
        root.add_module(name, module)
        return graph.call_module(name, (value,))

    x = call("stem", _fold_conv_bn_act(subnet.stem), graph.placeholder("x"))
    if isinstance(subnet.separable, nn.Sequential):
        x = call("separable", nn.Sequential(*map(_fold_conv_bn_act, subnet.separable)), x)
    for i, block in enumerate(subnet.layers):
        parts = _fold_block(block)
        hidden = call(f"layer{i}_expand", parts.pop("expand"), x)
        project = parts.pop("project")
        # What is left: the merged depthwise conv, or the official layout's paths to be summed.
        paths = [call(f"layer{i}_{name}", module, hidden) for name, module in parts.items()]
        mixed = paths[0]
        for path in paths[1:]:
            mixed = graph.call_function(operator.add, (mixed, path))
        out = call(f"layer{i}_project", project, mixed)
        x = graph.call_function(operator.add, (x, out)) if block.residual else out
    x = call("head", _fold_conv_bn_act(subnet.head), x)
    x = graph.call_function(F.adaptive_avg_pool2d, (x, 1))
    x = graph.call_function(torch.flatten, (x, 1))
    classifier = nn.Linear(subnet.classifier.in_features, subnet.classifier.out_features,
                           device=subnet.classifier.weight.device)
    classifier.load_state_dict({k: v.float() for k, v in subnet.classifier.state_dict().items()})
    graph.output(call("classifier", classifier, x))
    return fx.GraphModule(root, graph, class_name="FoldedSubNet").eval()


def _onnx_available() -> bool:
    # torch.onnx.export's default (dynamo) exporter needs onnxscript as well as onnx.
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxscript"))


def export_subnet(subnet: SubNet, path, example: Tensor, *, meta: dict, onnx: bool = False,
                  atol: float | None = None, force: bool = False) -> dict:
    """Fold `subnet`, export it on the CPU with torch.export (batch dimension dynamic), save it at `path` (.pt2).

    The saved program, loaded back, must match `subnet.eval()` on `example`
    within `atol` (default RELATIVE_TOLERANCE times the largest |logit|, at least
    1), or ExportError names the difference and nothing is written. Writes
    `path` with suffix .json (meta, max_abs_diff, tolerance, torch version) and,
    with onnx=True, .onnx. Refuses to overwrite any of them unless force=True.
    Returns what the JSON holds.
    """
    path = Path(path)
    outputs = [path, path.with_suffix(".json")] + ([path.with_suffix(".onnx")] if onnx else [])
    existing = [str(p) for p in outputs if p.exists()]
    if existing and not force:
        raise ExportError(f"will not overwrite {', '.join(existing)}; choose another path or pass force=True (--force)")
    if onnx and not _onnx_available():
        raise ExportError("--onnx needs the onnx package: pip install onnx onnxscript")
    if not path.parent.is_dir():
        raise ExportError(f"directory {path.parent} does not exist; create it first")
    was_training = subnet.training
    with torch.no_grad():
        expected = subnet.eval()(example.to(next(subnet.parameters()).device, torch.float32)).float().cpu()
    subnet.train(was_training)
    # Exported on the CPU, so the file loads anywhere; the loaded module can be moved with .to(device).
    folded, example = fold_subnet(subnet).cpu(), example.detach().float().cpu()
    # export specialises a dynamic dimension of size 1, so trace with at least two images.
    trace = example if len(example) > 1 else example.repeat(2, *[1] * (example.dim() - 1))
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(folded, (trace,), dynamic_shapes=({0: batch},))

    tolerance = atol if atol is not None else RELATIVE_TOLERANCE * max(1.0, expected.abs().max().item())

    # The temporary files keep the real suffix: the exporters go by it.
    with atomic_path(path, suffix=".tmp" + path.suffix) as tmp:
        torch.export.save(program, tmp)
        with torch.no_grad():
            got = torch.export.load(tmp).module()(example)
        diff = (got - expected).abs().max().item()
        if not diff <= tolerance:  # also catches NaN
            raise ExportError(f"the exported model differs from the subnet by up to {diff:.3g} "
                              f"(tolerance {tolerance:.3g}); nothing was written")
    info = {**meta, "max_abs_diff": diff, "tolerance": tolerance, "dynamic_batch": True, "torch": torch.__version__}
    if onnx:  # weights inside the file (external_data=False): a side file would keep the temporary name
        with atomic_path(outputs[2], suffix=".tmp.onnx") as tmp:
            torch.onnx.export(program, (example,), tmp, dynamo=True, external_data=False)
    write_json(outputs[1], info)
    return info


__all__ = ["ExportError", "RELATIVE_TOLERANCE", "export_subnet", "fold_subnet"]
