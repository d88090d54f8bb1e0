"""Starting a run from pretrained weights (`init_from`), and upcycling a baseline into the overparameterized G.

The overparameterized generator has exactly the baseline's parameters (the latent only gains rows), so a
baseline's state dict loads into it unchanged, and with all latent rows equal it makes the baseline's images.
Upcycling therefore starts with the rows equal and lets them separate gradually: rows are sampled as
Z_i = sqrt(1 - a) z + sqrt(a) z^(i) (`latent.normal_rows(spread=a)`, every row a unit Gaussian) with a ramped
linearly from 0 to the paper's 0.5 over `upcycle_kimg` (`row_spread`).

Sources: a model folder holding a Generator (a shipped model's name, a folder saved by this project, or one
converted from an NVIDIA pickle: G and G_ema both start from it), optionally a Discriminator folder
(`init_d`), or a run folder of `opstylegan train` (G, G_ema and D from its newest training state).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from opstylegan.config import ConfigError, DiscriminatorConfig, GeneratorConfig
from opstylegan.io.checkpoint import CheckpointError, read_model_json, resolve_model_dir

if TYPE_CHECKING:
    from opstylegan.training.config import TrainConfig

UPCYCLE_SPREAD = 0.5  # the paper's rows: Z_i = (z + z^(i)) / sqrt(2)


@dataclass(frozen=True)
class InitSource:
    """Where pretrained weights come from: kind 'model' (a Generator folder) or 'run' (a training run folder)."""

    kind: str
    path: Path
    generator: GeneratorConfig
    discriminator: DiscriminatorConfig | None


def _model_config(ref: str, cls: str, what: str) -> tuple[Path, dict[str, Any]]:
    from opstylegan.pretrained import resolve_model

    try:
        folder = resolve_model_dir(resolve_model(ref))
        meta = read_model_json(folder)
    except (FileNotFoundError, CheckpointError, ValueError) as e:
        raise ConfigError(f"{what} {ref!r}: {e}") from None
    if meta["class"] != cls:
        raise ConfigError(f"{what} {ref!r} holds a {meta['class']}, not a {cls}")
    return folder, meta["config"]


def init_source(ref: str) -> InitSource:
    """Reads the configs of `init_from` (a model folder / shipped name, or a training run folder), no weights."""
    path = Path(ref)
    if path.is_dir() and (path / "config.json").is_file() and not (path / "model.safetensors").exists():
        from opstylegan.training.loop import read_run_config

        run_cfg = read_run_config(path)
        if run_cfg.generator is None or run_cfg.discriminator is None:
            raise ConfigError(f"init_from {ref!r}: the run's config.json is not resolved (no network configs)")
        return InitSource("run", path, GeneratorConfig.from_dict(run_cfg.generator),
                          DiscriminatorConfig.from_dict(run_cfg.discriminator))
    folder, cfg = _model_config(ref, "Generator", "init_from")
    return InitSource("model", folder, GeneratorConfig.from_dict(cfg), None)


def init_configs(cfg: TrainConfig, *, img_resolution: int, img_channels: int,
                 batch_gpu: int) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """The generator and discriminator configs of a run started from `cfg.init_from` (and `cfg.init_d`).

    Returns (generator, discriminator, source_is_baseline). The generator keeps the source's architecture with
    the run's `overparam`; a model that does not fit the dataset is refused naming both.
    """
    assert cfg.init_from is not None
    src = init_source(cfg.init_from)
    g = src.generator
    shape = (img_channels, img_resolution)
    if (g.img_channels, g.img_resolution) != shape:
        raise ConfigError(f"init_from {cfg.init_from!r} makes {g.img_channels}x{g.img_resolution}px images but the "
                          f"dataset {cfg.data!r} has {img_channels}x{img_resolution}px images; use a model trained "
                          f"at the dataset's resolution and channels (or rebuild the dataset with `opstylegan "
                          f"dataset --resolution {g.img_resolution} --channels {g.img_channels}`)")
    if g.overparam and not cfg.overparam:
        raise ConfigError(f"init_from {cfg.init_from!r} is an overparameterized model; a baseline run cannot start "
                          f"from it (add --overparam to fine-tune it)")
    if cfg.upcycle_kimg and g.overparam:
        raise ConfigError(f"init_from {cfg.init_from!r} is already overparameterized: there is no baseline to "
                          f"upcycle, so upcycle_kimg must be 0 (or left out)")
    gen = g.replace(overparam=cfg.overparam, num_rows=g.num_rows if g.overparam else None,
                    num_fp16_res=0 if cfg.fp32 else g.num_fp16_res)
    if cfg.init_d is not None:
        _, dcfg = _model_config(cfg.init_d, "Discriminator", "init_d")
        disc = DiscriminatorConfig.from_dict(dcfg)
        if (disc.img_channels, disc.img_resolution) != shape:
            raise ConfigError(f"init_d {cfg.init_d!r} judges {disc.img_channels}x{disc.img_resolution}px images but "
                              f"the dataset {cfg.data!r} has {img_channels}x{img_resolution}px images")
    elif src.discriminator is not None:
        disc = src.discriminator
    else:  # a fresh D with the generator's widths
        disc = DiscriminatorConfig(img_resolution=g.img_resolution, img_channels=g.img_channels,
                                   channel_base=g.channel_base, channel_max=g.channel_max,
                                   num_fp16_res=g.num_fp16_res, conv_clamp=g.conv_clamp)
    disc = disc.replace(mbstd_group_size=min(batch_gpu, 4), num_fp16_res=0 if cfg.fp32 else disc.num_fp16_res)
    return gen.to_dict(), disc.to_dict(), not g.overparam


def load_init_weights(cfg: TrainConfig, G: torch.nn.Module, G_ema: torch.nn.Module | None,
                      D: torch.nn.Module) -> dict[str, Any]:
    """Copies the pretrained weights named by cfg.init_from / cfg.init_d into G (and G_ema) and D, strictly.

    Returns what was loaded ({"G": source, "D": source or None}) for the run's log.
    """
    from opstylegan.models.discriminator import Discriminator
    from opstylegan.models.generator import Generator

    assert cfg.init_from is not None
    src = init_source(cfg.init_from)
    d_state = None
    if src.kind == "run":
        from opstylegan.training.state import find_latest_state

        latest = find_latest_state(src.path, map_location="cpu")
        g_state, g_ema_state, d_state = latest.state["G"], latest.state["G_ema"], latest.state["D"]
        loaded = {"G": f"{latest.path} (G, G_ema)", "D": f"{latest.path} (D)"}
    else:
        try:
            g_state = g_ema_state = Generator.from_pretrained(src.path).state_dict()
        except CheckpointError as e:
            raise ConfigError(f"init_from {cfg.init_from!r}: {e}") from None
        loaded = {"G": str(src.path), "D": None}
    if cfg.init_d is not None:
        from opstylegan.pretrained import resolve_model

        try:
            d_state = Discriminator.from_pretrained(resolve_model(cfg.init_d)).state_dict()
        except (CheckpointError, FileNotFoundError) as e:
            raise ConfigError(f"init_d {cfg.init_d!r}: {e}") from None
        loaded["D"] = str(cfg.init_d)
    _load(G, g_state, "G", cfg.init_from)
    if G_ema is not None:
        _load(G_ema, g_ema_state, "G_ema", cfg.init_from)
    if d_state is not None:
        _load(D, d_state, "D", cfg.init_d or cfg.init_from)
    return loaded


def _load(module: torch.nn.Module, state: dict[str, torch.Tensor], name: str, source: str) -> None:
    expected = module.state_dict()
    bad = sorted(set(expected) ^ set(state)) + [k for k in expected if k in state and
                                                 expected[k].shape != state[k].shape]
    if bad:
        raise ConfigError(f"the {name} weights of {source!r} do not fit the run's network (first mismatches: "
                          f"{bad[:5]})")
    module.load_state_dict({k: v.to(expected[k].device, expected[k].dtype) for k, v in state.items()}, strict=True)


def row_spread(cfg: TrainConfig, cur_nimg: int) -> float | None:
    """The rows' own share of variance `a` for the latents drawn after `cur_nimg` images, or None for the
    paper's sampling (runs that do not upcycle, and upcycled runs once the ramp is over)."""
    if not cfg.overparam or not cfg.upcycle_kimg:
        return None
    start = (cfg.d_warmup_kimg or 0.0) * 1000  # the ramp starts when G starts training
    a = UPCYCLE_SPREAD * max(cur_nimg - start, 0) / (cfg.upcycle_kimg * 1000)
    return a if a < UPCYCLE_SPREAD else None


def g_frozen(cfg: TrainConfig, cur_nimg: int) -> bool:
    """True while only D trains (the first `d_warmup_kimg`)."""
    return cur_nimg < (cfg.d_warmup_kimg or 0.0) * 1000


def describe(cfg: TrainConfig) -> str:
    """One line for the log: what the run starts from and how the rows separate."""
    if cfg.init_from is None:
        return "random init"
    parts = [f"init from {cfg.init_from}"]
    if cfg.init_d:
        parts.append(f"D from {cfg.init_d}")
    if cfg.d_warmup_kimg:
        parts.append(f"only D trains for the first {cfg.d_warmup_kimg:g} kimg")
    if cfg.overparam and cfg.upcycle_kimg:
        parts.append(f"rows Z_i = sqrt(1-a) z + sqrt(a) z_i, a ramped 0 -> {UPCYCLE_SPREAD} over "
                     f"{cfg.upcycle_kimg:g} kimg")
    line = ", ".join(parts)
    if not cfg.init_d and not cfg.d_warmup_kimg and init_source(cfg.init_from).kind == "model":
        line += ("; WARNING: D starts from random weights and G follows its gradients at once, which degrades the "
                 "pretrained images at first: give --init-d, or --d-warmup-kimg")
    return line

