"""The `opstylegan` program. Subcommands are imported lazily so `opstylegan --help` stays fast."""

from __future__ import annotations

import importlib
import importlib.util

import click

# name -> module under opstylegan.cli that defines a click command called `command`.
SUBCOMMANDS = {
    "dataset": "dataset",
    "train": "train",
    "generate": "generate",
    "invert": "invert",
    "interpolate": "interpolate",
    "upsample": "upsample",
    "edit": "edit",
    "metrics": "metrics",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, mod in SUBCOMMANDS.items() if importlib.util.find_spec(f"opstylegan.cli.{mod}")]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in SUBCOMMANDS or cmd_name not in self.list_commands(ctx):
            return None
        return importlib.import_module(f"opstylegan.cli.{SUBCOMMANDS[cmd_name]}").command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="opstylegan")
def cli() -> None:
    """Overparameterized StyleGAN2: train, generate, invert, interpolate, upsample, edit, measure."""


def main() -> None:
    cli(prog_name="opstylegan")
