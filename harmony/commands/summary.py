"""``harmony summary``: the parameter counts of the model a config describes, or of one component.

The model is built with random weights: nothing is downloaded and no data is read (methods load
pretrained weights only when training or inference starts). A single component (a class or builder
function returning a module, with its arguments) is built on the ``meta`` device, so even a paper-sized
one is counted in a moment::

    harmony summary --config experiments/diffharmony.yaml
    harmony summary --component harmony.nn.latent.build_controlnet --component.conditioning_channels 7
    harmony summary --component harmony.nn.latent.build_unet --component.config sd15_text_to_image
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from harmony.commands.arguments import ToolArgumentParser
from harmony.errors import HarmonyInputError

if TYPE_CHECKING:
    from torch import nn

# torch is imported where it is used, so that --help and a bad argument answer at once.


def count_parameters(module: nn.Module) -> dict[str, object]:
    """Total, trainable and per-direct-child parameter counts (children without parameters omitted)."""
    children = {name: sum(p.numel() for p in child.parameters()) for name, child in module.named_children()}
    return {
        "total": sum(p.numel() for p in module.parameters()),
        "trainable": sum(p.numel() for p in module.parameters() if p.requires_grad),
        "children": {name: count for name, count in children.items() if count > 0},
    }


def build_model(configs: list[str], overrides: list[str]) -> nn.Module:
    """Instantiate the ``model`` of one or more composed LightningCLI configs."""
    args: list[str] = []
    for config in configs:
        if not Path(config).is_file():
            raise HarmonyInputError(config, "config file not found")
        args += ["--config", config]
    from harmony.lightning_cli import make_cli  # after the checks: a missing file is reported at once

    overrides = [*overrides, "--trainer.logger=false", "--trainer.accelerator=cpu", "--trainer.devices=1"]
    return make_cli(args + overrides, run=False).model


def build_component(argv: list[str]) -> nn.Module:
    """Instantiate ``--component <import path> [--component.<argument> <value> …]`` on the meta device."""
    import torch
    from jsonargparse import ArgumentParser
    from torch import nn

    parser = ArgumentParser(prog="harmony summary", exit_on_error=False)
    parser.add_argument("--component", type=nn.Module, required=True, help="a module class or builder")
    try:
        config = parser.parse_args(argv)
    except Exception as error:  # jsonargparse reports a bad path or argument as a generic error
        reason = " ".join(str(error).split())
        raise HarmonyInputError(None, f"cannot build the component: {reason}") from None
    with torch.device("meta"):
        return parser.instantiate(config).component


def _millions(count: int) -> str:
    return f"{count / 1e6:,.2f}M"


def main(argv: list[str] | None = None) -> int:
    """Print the parameter counts of a config's model (a table, or JSON with ``--json``)."""
    parser = ToolArgumentParser(prog="harmony summary", description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", help="a LightningCLI config (repeatable)")
    parser.add_argument(
        "--json", action="store_true", help='print {"total", "trainable", "children"} as JSON'
    )
    parser.add_argument(
        "overrides", nargs="*", help="extra LightningCLI arguments, e.g. --model.init_args.x=1"
    )
    parser.add_argument(
        "--component",
        help="instead of a config: a module class or builder function by import path, its arguments "
        "as --component.<name> <value> "
        "(e.g. harmony.nn.latent.build_controlnet --component.conditioning_channels 7)",
    )
    argv = list(argv if argv is not None else [])
    if any(arg.split("=")[0] == "--component" for arg in argv):
        # The component's own arguments are jsonargparse's to parse, in their given order.
        as_json = "--json" in argv
        model, source = build_component([a for a in argv if a != "--json"]), "random weights, meta device"
    else:
        args, unknown = parser.parse_known_args(argv)
        if not args.config:
            raise HarmonyInputError(None, "give --config <file> or --component <import path>")
        as_json = args.json
        model, source = build_model(args.config, args.overrides + unknown), ", ".join(args.config)
    counts = count_parameters(model)
    if as_json:
        print(json.dumps(counts, indent=2))
        return 0
    print(f"{type(model).__name__} ({source})")
    for name, count in counts["children"].items():  # type: ignore[union-attr]
        print(f"  {name:<28} {count:>15,}  {_millions(count):>10}")
    print(f"  {'total':<28} {counts['total']:>15,}  {_millions(counts['total']):>10}")  # type: ignore[arg-type]
    print(f"  {'trainable':<28} {counts['trainable']:>15,}  {_millions(counts['trainable']):>10}")  # type: ignore[arg-type]
    return 0
