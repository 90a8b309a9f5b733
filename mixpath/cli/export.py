"""`mixpath export ARCH --from RUN --out FILE.pt2`: a standalone inference model (`mixpath.export`).

RUN is a `mixpath retrain` folder (the network you ship: ARCH may be left out)
or a `mixpath train` supernet (the subnet ARCH, after BN recalibration on
training batches). In the `mixpath` layout each layer's paths are merged into
one depthwise kernel, every BatchNorm is folded into the conv before it, and the
result is saved with torch.export: `torch.export.load(FILE.pt2).module()` runs
without mixpath. The export is checked against the network in eval mode on a
batch of validation images and refused if they disagree beyond float32 rounding.
--space-file (a `mixpath shrink` result) refuses an ARCH outside its pockets.
"""
from __future__ import annotations

import argparse

from .common import UsageError, add_arch_source, add_subcommand, guarded, parser_options, read_arch

HELP = "save a subnet as a standalone torch.export model (paths merged, BN folded)"


def _fill(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_arch_source(p)
    p.add_argument("--from", dest="from_run", required=True, metavar="RUN",
                   help="a `mixpath retrain` folder, or a `mixpath train` supernet run")
    p.add_argument("--out", required=True, metavar="FILE.pt2", help="where to save the model (FILE.json beside)")
    p.add_argument("--onnx", action="store_true", help="also write FILE.onnx (needs the onnx package)")
    p.add_argument("--force", action="store_true", help="replace existing files")
    p.add_argument("--device", metavar="DEV", help="where to run the check (default: the run's, if present here)")
    p.add_argument("--data-dir", metavar="D", help="where the run's dataset is now (default: where it was)")
    p.add_argument("--check-batch", type=int, default=32, metavar="N",
                   help="validation images the export is checked on (default 32)")
    p.add_argument("--space-file", metavar="FILE", help="a shrunk space (space.json of `mixpath shrink`): refuse "
                   "an architecture outside its pockets")
    return p


PARSER_OPTIONS = parser_options(__doc__)


def add_parser(subparsers) -> None:
    add_subcommand(subparsers, "export", HELP, PARSER_OPTIONS, _fill, run)


def network_to_export(args):
    """(SubNet in eval mode, arch, space, splits, layout) for ARCH / --from RUN."""
    from ..calibrate import calibrate_bn
    from ..checkpoint import load_checkpoint
    from ..runs import open_retrained, open_run
    from ..space import load_space_file

    def in_space(space):
        return space if args.space_file is None else load_space_file(args.space_file, space)

    given = None if args.arch is None and args.from_front is None else read_arch(args.arch, args.from_front,
                                                                                 args.pick)
    if load_checkpoint(args.from_run)["config"].get("arch") is not None:
        net, splits, space, config = open_retrained(args.from_run, device=args.device, data_dir=args.data_dir)
        space = in_space(space)
        space.check(net.arch)
        if given is not None and space.parse(given) != net.arch:
            raise UsageError(f"--from {args.from_run} retrained {net.arch}, not {given}: drop ARCH or pass the "
                             "retrain folder of that architecture")
        return net, net.arch, space, splits, config["layout"]
    if given is None:
        raise UsageError(f"--from {args.from_run} is a supernet: give the ARCH to export (or --from-front "
                         "FILE --pick N)")
    run = open_run(args.from_run, device=args.device, data_dir=args.data_dir)
    space = in_space(run.space)
    arch = space.parse(given)
    net = run.supernet.subnet(arch)  # a copy: recalibrating it leaves the supernet as it was
    calibration, _ = run.batch_factories()
    calibrate_bn(net, None, calibration())
    return net.eval(), arch, space, run.splits, run.config["layout"]


def export(args) -> dict:
    from ..data import batches
    from ..export import ExportError, export_subnet

    if args.check_batch < 1:
        raise UsageError(f"--check-batch {args.check_batch} is out of range: use at least 1")
    if not args.out.endswith(".pt2"):
        raise UsageError(f"--out {args.out}: the file name must end in .pt2 (torch.export's format)")
    net, arch, space, splits, layout = network_to_export(args)
    device = next(net.parameters()).device
    x, _ = next(iter(batches(splits.val, args.check_batch, train=False, epoch=0, seed=0, device=device)))
    meta = {"arch": str(arch), "layout": layout, "input_size": splits.image_size, "num_classes": splits.num_classes,
            "mean": list(splits.mean), "std": list(splits.std), "flops": space.flops(arch),
            "params": space.params(arch, layout), "source": str(args.from_run)}
    try:
        info = export_subnet(net, args.out, x, meta=meta, onnx=args.onnx, force=args.force)
    except ExportError as e:
        raise UsageError(str(e)) from None
    print(f"{arch}: exported to {args.out} (max |difference| {info['max_abs_diff']:.3g} on {len(x)} validation "
          f"images; inputs {splits.image_size}x{splits.image_size}, normalised with the mean and std in "
          f"{args.out[:-4]}.json)")
    return info


def run(args: argparse.Namespace, prog: str) -> int:
    return guarded(prog, lambda: export(args))


__all__ = ["export", "network_to_export"]
