"""The `opstylegan` program. Subcommands are imported lazily so `opstylegan --help` stays fast.

Nothing here imports torch: `opstylegan --help` reads each subcommand's one-line help from its module's source
(the docstring of the function `command`) instead of importing the module.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

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
    "studio": "studio",
    "convert": "convert",
    "encoder": "encoder",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, mod in SUBCOMMANDS.items() if importlib.util.find_spec(f"opstylegan.cli.{mod}")]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in SUBCOMMANDS or cmd_name not in self.list_commands(ctx):
            return None
        return importlib.import_module(f"opstylegan.cli.{SUBCOMMANDS[cmd_name]}").command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            doc = _command_docstring(SUBCOMMANDS[name])
            # A stand-in command with the same help text gives click's own short-help rule, whatever the version.
            cmd = click.Command(name, help=doc) if doc is not None else self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _command_docstring(module: str) -> str | None:
    """Docstring of the top-level function `command` in opstylegan/cli/<module>.py, read without importing it.

    None when the module has no such documented function (the caller then imports the module).
    """
    spec = importlib.util.find_spec(f"opstylegan.cli.{module}")
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "command":
            return ast.get_docstring(node)
    return None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="opstylegan")
def cli() -> None:
    """Overparameterized StyleGAN2: train, generate, invert, interpolate, upsample, edit, measure."""


def main() -> None:
    cli(prog_name="opstylegan")
