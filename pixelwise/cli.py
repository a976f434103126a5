"""The ``pixelwise`` command: parses arguments and calls the library; no logic of its own."""
from __future__ import annotations

import argparse
import inspect
import sys
from typing import Sequence

from rich.console import Console
from rich.table import Table

console = Console()
if not console.is_terminal:  # pipes and CI logs: rich's 80-column default would fold every table
    console = Console(width=160)


def _cmd_models(args: argparse.Namespace) -> int:
    from pixelwise.models import list_models, model_info
    from pixelwise.models.zoo import count_parameters

    if args.name:
        info = model_info(args.name)
        console.print(f"[bold]{info.name}[/] ({info.family}) — create_model{inspect.signature(info.builder)}\n")
        console.print(inspect.getdoc(info.builder), markup=False)
        return 0
    table = Table(title=f"pixelwise models (parameters at {args.num_classes} classes)")
    for column in ("name", "family", "default encoder", "parameters", "description"):
        table.add_column(column, justify="right" if column == "parameters" else "left")
    for name in list_models():
        info = model_info(name)
        table.add_row(name, info.family, info.default_encoder or "(paper's own)",
                      f"{count_parameters(name, args.num_classes) / 1e6:.1f}M", info.description)
    console.print(table)
    console.print("Options and defaults of one model: pixelwise models NAME")
    return 0


def _cmd_encoders(args: argparse.Namespace) -> int:
    from pixelwise.encoders import create_encoder, list_encoders

    table = Table(title="pixelwise encoders (any timm model too: timm:NAME)")
    for column in ("name", "channels", "strides"):
        table.add_column(column)
    for name in list_encoders():
        encoder = create_encoder(name)
        table.add_row(name, str(encoder.channels), str(encoder.reductions))
    console.print(table)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from pixelwise.demo import run_demo

    return run_demo(console, height=args.size[0], width=args.size[1])


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(prog="pixelwise", description="Semantic segmentation, real and inspectable.")
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="list the registered models, or show one model's options")
    models.add_argument("name", nargs="?", help="a model name: show its options and defaults")
    models.add_argument("--num-classes", type=int, default=21)
    models.set_defaults(run=_cmd_models)

    encoders = commands.add_parser("encoders", help="list the encoders with their channels and strides")
    encoders.set_defaults(run=_cmd_encoders)

    demo = commands.add_parser("demo", help="build every model and run it on a synthetic image")
    demo.add_argument("--size", type=int, nargs=2, default=(253, 317), metavar=("H", "W"))
    demo.set_defaults(run=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pixelwise`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        console.print(f"[bold red]error:[/] {error}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
