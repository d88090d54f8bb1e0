"""Options and helpers shared by the subcommands (parsing of seed lists, devices, model loading).

torch is imported inside the functions that need it, so that importing this module (every subcommand does)
stays fast for `--help` and for argument errors.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from opstylegan.pretrained import DEFAULT_MODEL

if TYPE_CHECKING:
    import torch

MAX_SEED = 2**32 - 1
MAX_SEEDS = 1_000_000


def parse_seeds(spec: str) -> list[int]:
    """'0-7,12' -> [0, 1, ..., 7, 12]. Ranges are inclusive; seeds are integers in [0, 2^32 - 1]."""
    seeds: list[int] = []
    if not spec or not spec.strip():
        raise ValueError("empty seed list; give e.g. '0-7,12'")
    for part in spec.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"bad seed item {part!r} in {spec!r}; expected N or A-B with non-negative integers, "
                             f"e.g. '0-7,12'")
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) is not None else a
        if b < a:
            raise ValueError(f"bad seed range {part!r}: the end ({b}) is before the start ({a})")
        if b > MAX_SEED:
            raise ValueError(f"seed {b} is out of range; seeds must be in [0, {MAX_SEED}]")
        if len(seeds) + (b - a + 1) > MAX_SEEDS:
            raise ValueError(f"seed list {spec!r} has more than {MAX_SEEDS} seeds")
        seeds.extend(range(a, b + 1))
    return seeds


class SeedList(click.ParamType):
    name = "SEEDS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[int]:
        if isinstance(value, list):
            return value
        try:
            return parse_seeds(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


def resolve_device(name: str) -> torch.device:
    """--device value -> torch.device; 'auto' picks CUDA when available."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise click.BadParameter(f"device {name!r} requested but CUDA is not available; use --device cpu",
                                 param_hint="--device")
    try:
        return torch.device(name)
    except RuntimeError:
        raise click.BadParameter(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N",
                                 param_hint="--device") from None


device_option = click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda[:N]",
                             help="Where to run.")


class ModelRef(click.ParamType):
    """A model folder, or the name of a model shipped with opstylegan (opstylegan.pretrained.SHIPPED)."""

    name = "MODEL"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from opstylegan.pretrained import SHIPPED

        if str(value) in SHIPPED or Path(value).exists():
            return str(value)
        self.fail(f"{value!r} is neither a model folder nor a shipped model ({', '.join(SHIPPED)})", param, ctx)


def model_option(*, default: str | None = DEFAULT_MODEL, help: str = "") -> Any:
    """The --model option of every command: a folder (config.json + model.safetensors) or a shipped name.

    The option is never required: `default=None` means the command resolves a missing --model itself (generate
    falls back to the shipped model unless --init is given). Marking it required with a None default made
    click 8.1 refuse the command without --model and print "[required]" beside the default.
    """
    text = help or "Model folder (config.json + model.safetensors), or a shipped model's name."
    return click.option("--model", type=ModelRef(), default=default, required=False,
                        show_default=default is not None, help=text)


def load_generator(path: str | os.PathLike[str], device: torch.device) -> Any:
    """Loads a Generator (folder or shipped name) for a CLI command, turning library errors into clean CLI errors."""
    from opstylegan.config import ConfigError
    from opstylegan.io.checkpoint import CheckpointError
    from opstylegan.models.generator import Generator
    from opstylegan.pretrained import resolve_model

    try:
        return Generator.from_pretrained(resolve_model(path), device=device)
    except (FileNotFoundError, CheckpointError, ConfigError) as e:
        raise click.ClickException(str(e)) from None


def write_json(path: Path, obj: Any) -> None:
    from opstylegan.io.atomic import write_text

    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
